//! Lowering: from the syntax tree to the typed [`Config`], checking everything on the way.
//!
//! Owns the meaning of each line: which directives a block may hold, how each value parses,
//! what a `<domain>` pattern and a `$macro` expand to, and whether the names one object
//! gives (pool members, pattern lists, reroute targets) exist. Every problem becomes a
//! [`Diagnostic`] and lowering goes on, so one pass reports every mistake. It must not read
//! the clock; it reads files (DKIM keys) only through the [`FileSystem`] it is given.

use std::path::Path;

use indexmap::IndexMap;

use super::diag::{Diagnostic, did_you_mean};
use super::directives::{self, Alias, BlockKind, DIRECTIVES, ValueKind};
use super::model::{
    BOUNCE_CATEGORIES, BounceRule, Config, DkimKey, DomainBlock, DomainKey, DomainPattern,
    EnvelopeField, KeyMaterial, MxRollup, NamedBlock, NoEffect, Pattern, PatternAction,
    PatternList, Pool, QueueMode, ReplyRule, RouteRule, Setting, Settings, SmtpPatternList,
    SourceBlock, Value, VirtualMta, Written,
};
use super::queue;
use super::source::{FileSystem, Span, Spanned};
use super::syntax::{Block, DirectiveLine, Item, Token, TokenKind};
use super::value::{self, ValueError};

/// Most domains one `<domain>` pattern may expand to through macros.
const MACRO_EXPANSION_MAX: usize = 10_000;
/// Deepest macro-in-macro nesting.
const MACRO_DEPTH_MAX: usize = 16;

/// How the configuration will be used; live sending is stricter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// `--live`: real mail will be sent, so a DKIM key that cannot be read is an error.
    pub live: bool,
}

pub(super) fn lower(
    items: &[Item],
    config: &mut Config,
    fs: &dyn FileSystem,
    options: Options,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut lowerer = Lowerer {
        config,
        fs,
        options,
        diagnostics,
        macro_spans: IndexMap::new(),
    };
    lowerer.collect_macros(items);
    for item in items {
        match item {
            Item::Directive(line) => lowerer.top_directive(line),
            Item::Block(block) => lowerer.block(block),
        }
    }
    lowerer.check_references();
    lowerer.load_dkim_keys();
}

struct Lowerer<'a> {
    config: &'a mut Config,
    fs: &'a dyn FileSystem,
    options: Options,
    diagnostics: &'a mut Vec<Diagnostic>,
    macro_spans: IndexMap<String, Span>,
}

impl Lowerer<'_> {
    fn error(&mut self, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.diagnostics.push(Diagnostic::error(span, message));
        self.diagnostics.last_mut().expect("just pushed")
    }

    fn warning(&mut self, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.diagnostics.push(Diagnostic::warning(span, message));
        self.diagnostics.last_mut().expect("just pushed")
    }

    fn no_effect(&mut self, what: String, span: Span) {
        self.config.no_effect.push(NoEffect { what, span });
    }

    // --- domain macros -------------------------------------------------------------------

    /// Reads every `domain-macro` first: a macro may be used above its definition.
    fn collect_macros(&mut self, items: &[Item]) {
        let mut raw: IndexMap<String, (Vec<String>, Span)> = IndexMap::new();
        for item in items {
            let Item::Directive(line) = item else {
                continue;
            };
            if !line.name.text.eq_ignore_ascii_case("domain-macro") {
                continue;
            }
            let text = line.value_text();
            let Some((name, rest)) = text.split_once(char::is_whitespace) else {
                self.error(
                    line.span,
                    "`domain-macro` needs a name and a list of domains",
                )
                .help = Some("write `domain-macro yahoo yahoo.com, ymail.com`".into());
                continue;
            };
            let values: Vec<String> = rest
                .split(',')
                .map(|v| v.trim().to_ascii_lowercase())
                .filter(|v| !v.is_empty())
                .collect();
            if let Some((_, previous)) = raw.get(name) {
                let previous = *previous;
                self.error(line.span, format!("domain macro `{name}` is defined twice"))
                    .notes
                    .push((previous, "first defined here".into()));
                continue;
            }
            raw.insert(name.to_ascii_lowercase(), (values, line.span));
        }
        for (name, (_, span)) in &raw {
            let mut stack = vec![name.clone()];
            match expand_macro(&raw, name, &mut stack) {
                Ok(values) => {
                    self.config.domain_macros.insert(name.clone(), values);
                }
                Err(message) => {
                    self.error(*span, message);
                }
            }
            self.macro_spans.insert(name.clone(), *span);
        }
    }

    /// Expands `$name` references inside a `<domain>` pattern: `$yahoo`, `yahoo.$tld`.
    fn expand_pattern(&mut self, text: &str, span: Span) -> Vec<String> {
        let Some(dollar) = text.find('$') else {
            return vec![text.to_string()];
        };
        let prefix = &text[..dollar];
        let after = &text[dollar + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(after.len());
        let name = after[..name_len].to_ascii_lowercase();
        let suffix = &after[name_len..];
        let Some(values) = self.config.domain_macros.get(&name).cloned() else {
            if self.macro_spans.contains_key(&name) {
                return Vec::new(); // defined but broken: already reported
            }
            let suggestion = did_you_mean(&name, self.macro_spans.keys().map(String::as_str))
                .map(|s| format!("did you mean `${s}`?"));
            let diag = self.error(span, format!("domain macro `${name}` is not defined"));
            diag.help = Some(suggestion.unwrap_or_else(|| {
                format!("define it first: `domain-macro {name} example.com, example.net`")
            }));
            return Vec::new();
        };
        let mut out = Vec::new();
        for value in values {
            for rest in self.expand_pattern(suffix, span) {
                if out.len() >= MACRO_EXPANSION_MAX {
                    self.error(
                        span,
                        format!("`{text}` expands to more than {MACRO_EXPANSION_MAX} domains"),
                    );
                    return out;
                }
                out.push(format!("{prefix}{value}{rest}"));
            }
        }
        out
    }

    // --- directives --------------------------------------------------------------------------

    fn top_directive(&mut self, line: &DirectiveLine) {
        if line.name.text.eq_ignore_ascii_case("domain-macro") {
            return; // read by collect_macros
        }
        if let Some(setting) = self.setting(line, None) {
            self.config.globals.insert(setting);
        }
    }

    /// Types one directive line written at the top level (`None`) or in a block.
    fn setting(&mut self, line: &DirectiveLine, block: Option<BlockKind>) -> Option<Setting> {
        let written = line.name.text.to_ascii_lowercase();
        let mut name = written.as_str();
        if let Some(alias) = directives::alias(name) {
            match alias {
                Alias::Synonym { canonical } => name = canonical,
                Alias::Deprecated { instead } => {
                    self.diagnostics.push(
                        Diagnostic::warning(
                            line.name.span,
                            format!("`{written}` is deprecated and has no effect here"),
                        )
                        .with_help(format!("write `{instead}` instead")),
                    );
                    self.no_effect(written.clone(), line.span);
                    return None;
                }
            }
        }
        let where_ = match block {
            None => "at the top level".to_string(),
            Some(kind) => format!("inside `<{}>`", kind.tag()),
        };
        let Some(spec) = directives::lookup(name) else {
            let help = directives::invented(name).map(str::to_string).or_else(|| {
                did_you_mean(name, DIRECTIVES.iter().map(|d| d.name))
                    .map(|s| format!("did you mean `{s}`?"))
            });
            let diag = self.error(line.name.span, format!("unknown directive `{written}`"));
            diag.help = help;
            return None;
        };
        let allowed = match block {
            None => spec.allowed_at_top(),
            // The block itself was reported; still check each line's value.
            Some(BlockKind::Unknown) => true,
            Some(kind) => spec.allowed_in(kind),
        };
        if !allowed {
            let help = directives::invented(name)
                .map(str::to_string)
                .unwrap_or_else(|| format!("`{}` may appear {}", spec.name, spec.places()));
            let diag = self.error(
                line.name.span,
                format!("`{written}` is not allowed {where_}"),
            );
            diag.help = Some(help);
            return None;
        }
        let value = self.value(spec.name, spec.kind, line)?;
        if block != Some(BlockKind::Unknown) {
            self.config.written.push(Written {
                name: spec.name,
                block,
                span: line.span,
            });
        }
        Some(Setting {
            spec,
            value,
            span: line.span,
        })
    }

    fn value(&mut self, name: &str, kind: ValueKind, line: &DirectiveLine) -> Option<Value> {
        if line.args.is_empty() {
            self.error(line.span, format!("`{name}` needs a value"));
            return None;
        }
        if let [only] = line.args.as_slice()
            && only.kind == TokenKind::Quoted
            && only.text.is_empty()
        {
            return Some(Value::Cleared);
        }
        let text = line.value_text();
        let span = line.value_span();
        let one_word = |this: &mut Self| -> bool {
            if line.args.len() > 1 {
                this.error(
                    line.args[1].span.to(span),
                    format!("`{name}` takes one value, found {}", line.args.len()),
                )
                .help = Some("remove the extra words, or quote a value that has spaces".into());
                return false;
            }
            true
        };
        let parsed: Result<Value, ValueError> = match kind {
            ValueKind::Bool => {
                if !one_word(self) {
                    return None;
                }
                value::parse_bool(&text).map(Value::Bool)
            }
            ValueKind::Count => {
                one_word(self).then(|| value::parse_count(&text).map(Value::Count))?
            }
            ValueKind::CountOrUnlimited => {
                if !one_word(self) {
                    return None;
                }
                if text.eq_ignore_ascii_case("unlimited") {
                    Ok(Value::Unlimited)
                } else {
                    value::parse_count(&text).map(Value::Count)
                }
            }
            ValueKind::BoundedCount(max) => {
                if !one_word(self) {
                    return None;
                }
                match value::parse_count(&text) {
                    Ok(n) if n > max => {
                        self.error(
                            span,
                            format!("`{name}` must be between 0 and {max}, found {n}"),
                        );
                        return None;
                    }
                    other => other.map(Value::Count),
                }
            }
            ValueKind::Interval => {
                one_word(self).then(|| value::parse_interval(&text).map(Value::Interval))?
            }
            ValueKind::IntervalOrNever => {
                if !one_word(self) {
                    return None;
                }
                if text.eq_ignore_ascii_case("never") {
                    Ok(Value::Never)
                } else {
                    value::parse_interval(&text).map(Value::Interval)
                }
            }
            ValueKind::IntervalList => value::parse_interval_list(&text).map(Value::IntervalList),
            ValueKind::BoolOrInterval => {
                if !one_word(self) {
                    return None;
                }
                match value::parse_bool(&text) {
                    Ok(b) => Ok(Value::Bool(b)),
                    Err(_) if text.eq_ignore_ascii_case("never") => Ok(Value::Never),
                    Err(_) => value::parse_interval(&text)
                        .map(Value::Interval)
                        .map_err(|mut e| {
                            e.expected = "yes, no, never or a time interval such as 1h";
                            e
                        }),
                }
            }
            ValueKind::Rate => one_word(self).then(|| value::parse_rate(&text).map(Value::Rate))?,
            ValueKind::RateList => text
                .split(',')
                .map(|r| value::parse_rate(r.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::RateList),
            ValueKind::DataRate => {
                one_word(self).then(|| value::parse_data_rate(&text).map(Value::DataRate))?
            }
            ValueKind::Size => one_word(self).then(|| value::parse_size(&text).map(Value::Size))?,
            ValueKind::Address => {
                one_word(self).then(|| value::parse_address(&text).map(Value::Address))?
            }
            ValueKind::AddressList => value::parse_address_list(&text).map(Value::AddressList),
            ValueKind::Name => {
                one_word(self).then(|| Ok(Value::Text(line.args[0].text.clone())))?
            }
            ValueKind::Choice(words) => {
                if !one_word(self) {
                    return None;
                }
                let lower = text.to_ascii_lowercase();
                if words.contains(&lower.as_str()) {
                    Ok(Value::Text(lower))
                } else {
                    let diag = self.error(
                        span,
                        format!(
                            "`{name}` must be one of {}, found `{text}`",
                            words.join(", ")
                        ),
                    );
                    diag.help = did_you_mean(&lower, words.iter().copied())
                        .map(|s| format!("did you mean `{s}`?"));
                    return None;
                }
            }
            ValueKind::IpHost => value::parse_ip_host(&text).map(Value::IpHost),
            ValueKind::SourceIpCount | ValueKind::SourceIpRate | ValueKind::SourceIpDataRate => {
                self.per_source_ip(kind, line)
            }
            ValueKind::DomainKey => parse_domain_key(&text).map(Value::DomainKey),
            ValueKind::Listener => one_word(self)
                .then(|| value::parse_listener(&text).map(|addr| Value::Text(addr.to_string())))?,
            // Kept as written once valid; the management API reads it with the same parser.
            ValueKind::HttpAccess => {
                value::parse_http_access(&text).map(|_| Value::Text(text.clone()))
            }
            ValueKind::RedisUrl => one_word(self)
                .then(|| value::parse_redis_url(&text).map(|url| Value::Text(url.to_string())))?,
            ValueKind::AcctRecords => {
                value::parse_acct_records(&text).map(|codes| Value::Text(codes.join(",")))
            }
            ValueKind::AcctFields => value::parse_acct_fields(&text).map(|(code, fields)| {
                self.unknown_acct_fields(span, &fields);
                Value::Text(format!("{code} {}", fields.join(",")))
            }),
            ValueKind::Text => Ok(Value::Text(text.clone())),
        };
        match parsed {
            Ok(value) => Some(value),
            Err(err) => {
                let diag = self.error(span, format!("`{name}`: {err}"));
                if let Some(suggestion) = &err.suggestion {
                    diag.help = Some(format!("write `{name} {suggestion}`"));
                }
                None
            }
        }
    }

    /// Fields of `record-fields` that are not PowerMTA's (nor `*` or `header_NAME`) are
    /// written empty: a warning, with the closest field when one is close.
    fn unknown_acct_fields(&mut self, span: Span, fields: &[String]) {
        for field in fields {
            if field == "*" || field.starts_with("header_") || value::is_acct_field(field) {
                continue;
            }
            let diag = self.warning(
                span,
                format!("`record-fields`: `{field}` is not an accounting field PowerMTA documents; its column stays empty"),
            );
            diag.help = did_you_mean(
                field,
                value::ACCT_DEFAULT_FIELDS
                    .iter()
                    .chain(&value::ACCT_EXTRA_FIELDS)
                    .copied(),
            )
            .map(|s| format!("did you mean `{s}`?"));
        }
    }

    fn per_source_ip(
        &mut self,
        kind: ValueKind,
        line: &DirectiveLine,
    ) -> Result<Value, ValueError> {
        let expected = "a source IP network and a value, such as 192.0.2.0/24 5";
        let [cidr, rest @ ..] = line.args.as_slice() else {
            return Err(ValueError {
                expected,
                found: String::new(),
                suggestion: None,
            });
        };
        let cidr = value::parse_cidr(&cidr.text)?;
        let [amount] = rest else {
            return Err(ValueError {
                expected,
                found: line.value_text(),
                suggestion: None,
            });
        };
        let value = match kind {
            ValueKind::SourceIpCount => Value::Count(value::parse_count(&amount.text)?),
            ValueKind::SourceIpRate => Value::Rate(value::parse_rate(&amount.text)?),
            _ => Value::DataRate(value::parse_data_rate(&amount.text)?),
        };
        Ok(Value::PerSourceIp {
            cidr,
            value: Box::new(value),
        })
    }

    // --- blocks ------------------------------------------------------------------------------

    fn block(&mut self, block: &Block) {
        match block.kind {
            BlockKind::VirtualMta => self.virtual_mta(block),
            BlockKind::VirtualMtaPool => self.pool(block),
            BlockKind::Domain => {
                let domains = self.domain(block);
                self.config.domains.extend(domains);
            }
            BlockKind::Source => {
                let Some(selector) = self.required_arg(block, "a source IP, network or {name}")
                else {
                    return;
                };
                self.check_source_selector(&selector, block);
                let settings = self.settings(block, BlockKind::Source);
                self.config.source_blocks.push(SourceBlock {
                    selector,
                    settings,
                    span: block.open,
                });
            }
            BlockKind::SmtpPatternList => self.smtp_pattern_list(block),
            BlockKind::BounceCategoryPatterns => self.bounce_categories(block),
            BlockKind::PatternList => self.pattern_list(block),
            BlockKind::MxRollupList => self.mx_rollups(block),
            BlockKind::AcctFile | BlockKind::Spool | BlockKind::SmtpUser => {
                let Some(name) = self.required_arg(block, "a name or path") else {
                    return;
                };
                let settings = self.settings(block, block.kind);
                let named = NamedBlock {
                    name,
                    settings,
                    span: block.open,
                };
                match block.kind {
                    BlockKind::AcctFile => self.config.acct_files.push(named),
                    BlockKind::Spool => self.config.spools.push(named),
                    _ => self.config.smtp_users.push(named),
                }
            }
            BlockKind::Unknown => {
                self.settings(block, BlockKind::Unknown);
            }
            _ => {
                debug_assert!(block.kind.is_opaque());
                self.no_effect(format!("<{}>", block.kind.tag()), block.open);
            }
        }
    }

    /// `<source>` takes an IP address, a network, `0/0` or a `{name}` set by `<smtp-user>`.
    fn check_source_selector(&mut self, selector: &str, block: &Block) {
        let is_name = selector.starts_with('{') && selector.ends_with('}') && selector.len() > 2;
        if is_name || value::parse_cidr(selector).is_ok() {
            return;
        }
        let span = block.arg.as_ref().map_or(block.open, |a| a.span);
        let diag = self.error(
            span,
            format!("`{selector}` is not a source address or name"),
        );
        diag.help = Some(if selector == "*" {
            "write `<source 0/0>` for every address".into()
        } else {
            "write an IP address, a network such as 10.0.0.0/8, `0/0`, or `{name}`".into()
        });
    }

    fn required_arg(&mut self, block: &Block, what: &str) -> Option<String> {
        match &block.arg {
            Some(arg) => Some(arg.value.clone()),
            None => {
                let tag = block.kind.tag();
                self.error(block.open, format!("`<{tag}>` needs {what}"));
                None
            }
        }
    }

    /// The plain directives of a block; nested blocks other than `<domain>` were already
    /// rejected by the parser.
    fn settings(&mut self, block: &Block, kind: BlockKind) -> Settings {
        let mut settings = Settings::default();
        for item in &block.items {
            if let Item::Directive(line) = item
                && let Some(setting) = self.setting(line, Some(kind))
            {
                settings.insert(setting);
            }
        }
        settings
    }

    fn virtual_mta(&mut self, block: &Block) {
        let Some(name) = self.required_arg(block, "a name") else {
            return;
        };
        let settings = self.settings(block, BlockKind::VirtualMta);
        let mut domains = Vec::new();
        for item in &block.items {
            if let Item::Block(inner) = item
                && inner.kind == BlockKind::Domain
            {
                domains.extend(self.domain(inner));
            }
        }
        if settings.get("smtp-source-host").is_none() {
            self.diagnostics.push(
                Diagnostic::warning(
                    block.open,
                    format!("virtual MTA `{name}` has no `smtp-source-host`"),
                )
                .with_help("it will send from the machine's default address; add `smtp-source-host IP HOSTNAME`"),
            );
        }
        self.check_unique_name(&name, block.open, "virtual MTA");
        self.config.virtual_mtas.insert(
            name.clone(),
            VirtualMta {
                name,
                settings,
                domains,
                span: block.open,
            },
        );
    }

    /// Virtual MTAs and pools share one namespace: `default-virtual-mta` names either.
    fn check_unique_name(&mut self, name: &str, span: Span, what: &str) {
        let previous = self
            .config
            .virtual_mtas
            .get(name)
            .map(|v| v.span)
            .or_else(|| self.config.pools.get(name).map(|p| p.span));
        if let Some(previous) = previous {
            self.error(span, format!("{what} name `{name}` is already used"))
                .notes
                .push((previous, "first used here".into()));
        }
    }

    fn pool(&mut self, block: &Block) {
        let Some(name) = self.required_arg(block, "a name") else {
            return;
        };
        let mut members = Vec::new();
        for item in &block.items {
            if let Item::Directive(line) = item
                && let Some(setting) = self.setting(line, Some(BlockKind::VirtualMtaPool))
                && let Value::Text(member) = setting.value
            {
                members.push(Spanned {
                    value: member,
                    span: line.value_span(),
                });
            }
        }
        if members.is_empty() {
            self.error(
                block.open,
                format!("pool `{name}` has no `virtual-mta` lines"),
            );
        }
        self.check_unique_name(&name, block.open, "pool");
        self.config.pools.insert(
            name.clone(),
            Pool {
                name,
                members,
                span: block.open,
            },
        );
    }

    fn domain(&mut self, block: &Block) -> Vec<DomainBlock> {
        let Some(arg) = &block.arg else {
            self.error(block.open, "`<domain>` needs a pattern")
                .help = Some("write `<domain example.com>`, `<domain *.example.com>`, `<domain [*.]example.com>` or `<domain *>`".into());
            return Vec::new();
        };
        let settings = self.settings(block, BlockKind::Domain);
        let from_macro = arg.value.contains('$');
        let mut blocks = Vec::new();
        for text in self.expand_pattern(&arg.value, arg.span) {
            match parse_domain_pattern(&text) {
                Some(pattern) => blocks.push(DomainBlock {
                    pattern,
                    from_macro,
                    settings: settings.clone(),
                    span: block.open,
                }),
                None => {
                    self.error(arg.span, format!("`{text}` is not a domain pattern"))
                        .help = Some(
                        "write `example.com`, `*.example.com`, `[*.]example.com`, `*` or `$macro`"
                            .into(),
                    );
                }
            }
        }
        blocks
    }

    fn smtp_pattern_list(&mut self, block: &Block) {
        let Some(name) = self.required_arg(block, "a name") else {
            return;
        };
        let mut rules = Vec::new();
        for line in directives_of(block) {
            if !line.name.text.eq_ignore_ascii_case("reply") {
                let diag = self.error(
                    line.name.span,
                    format!(
                        "unknown pattern line `{}` in `<smtp-pattern-list>`",
                        line.name.text
                    ),
                );
                diag.help =
                    Some("lines look like `reply /421 .* try again later/ mode=backoff`".into());
                continue;
            }
            let Some((regex, actions)) = line.args.split_first() else {
                self.error(line.span, "`reply` needs a /regex/ and actions");
                continue;
            };
            let Some(pattern) = self.pattern(regex) else {
                continue;
            };
            let mut parsed = Vec::new();
            for action in actions {
                if let Some(action) = self.reply_action(action) {
                    parsed.push(action);
                }
            }
            if actions.is_empty() {
                self.error(line.span, "`reply` pattern has no action").help =
                    Some("add an action such as `mode=backoff`".into());
            }
            rules.push(ReplyRule {
                pattern,
                actions: parsed,
                span: line.span,
            });
        }
        if let Some(previous) = self.config.smtp_pattern_lists.get(&name) {
            let previous = previous.span;
            self.error(
                block.open,
                format!("smtp pattern list `{name}` is defined twice"),
            )
            .notes
            .push((previous, "first defined here".into()));
            return;
        }
        self.config.smtp_pattern_lists.insert(
            name.clone(),
            SmtpPatternList {
                name,
                rules,
                span: block.open,
            },
        );
    }

    fn reply_action(&mut self, token: &Token) -> Option<PatternAction> {
        const ACTIONS: &[&str] = &[
            "mode=backoff",
            "mode=normal",
            "backoff-to-normal-after=",
            "bounce-queue",
            "disable-source-ip",
            "reenable-after=",
        ];
        let text = token.text.to_ascii_lowercase();
        let interval_or_never = |this: &mut Self, value: &str| -> Option<Option<value::Interval>> {
            if value == "never" {
                return Some(None);
            }
            match value::parse_interval(value) {
                Ok(i) => Some(Some(i)),
                Err(err) => {
                    this.error(token.span, format!("`{}`: {err}", token.text));
                    None
                }
            }
        };
        let action = match text.split_once('=') {
            Some(("mode", "backoff")) => PatternAction::Mode(QueueMode::Backoff),
            Some(("mode", "normal")) => PatternAction::Mode(QueueMode::Normal),
            Some(("backoff-to-normal-after", v)) => {
                PatternAction::BackoffToNormalAfter(interval_or_never(self, v)?)
            }
            Some(("reenable-after", v)) => {
                PatternAction::ReenableAfter(interval_or_never(self, v)?)
            }
            None if text == "bounce-queue" => PatternAction::BounceQueue,
            None if text == "disable-source-ip" => PatternAction::DisableSourceIp,
            _ => {
                let diag = self.error(
                    token.span,
                    format!("unknown pattern action `{}`", token.text),
                );
                diag.help = Some(match did_you_mean(&text, ACTIONS.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("actions are {}", ACTIONS.join(", ")),
                });
                return None;
            }
        };
        Some(action)
    }

    fn pattern(&mut self, token: &Token) -> Option<Pattern> {
        if token.kind != TokenKind::Regex {
            self.error(
                token.span,
                format!("expected a /regex/, found `{}`", token.text),
            )
            .help = Some("enclose the pattern in slashes: /421 .* try again later/".into());
            return None;
        }
        // PowerMTA matches replies case-insensitively unless the pattern says `(?-i)`.
        match fancy_regex::RegexBuilder::new(&format!("(?i){}", token.text))
            .delegate_size_limit(1 << 20)
            .build()
        {
            Ok(regex) => {
                if let Some(err) = backtracking_failure(&token.text, &regex) {
                    self.warning(
                        token.span,
                        format!("this pattern stops at the regex engine's backtracking limit on a reply of {BACKTRACK_PROBE_BYTES} bytes ({err}): whether it matches such a reply is unknown"),
                    )
                    .help = Some("simplify it: backreferences, lookarounds and atomic groups run on a backtracking engine with a step limit".into());
                }
                Some(Pattern {
                    source: token.text.clone(),
                    regex,
                })
            }
            Err(err) => {
                self.error(token.span, format!("invalid regular expression: {err}"));
                None
            }
        }
    }

    fn bounce_categories(&mut self, block: &Block) {
        for line in directives_of(block) {
            let Some(pattern) = self.pattern(&line.name) else {
                continue;
            };
            let [category] = line.args.as_slice() else {
                self.error(line.span, "a bounce rule is `/regex/ category`")
                    .help = Some(format!("categories are {}", BOUNCE_CATEGORIES.join(", ")));
                continue;
            };
            let lower = category.text.to_ascii_lowercase();
            if !BOUNCE_CATEGORIES.contains(&lower.as_str()) {
                let diag = self.error(
                    category.span,
                    format!("unknown bounce category `{}`", category.text),
                );
                diag.help = Some(
                    match did_you_mean(&lower, BOUNCE_CATEGORIES.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("categories are {}", BOUNCE_CATEGORIES.join(", ")),
                    },
                );
                continue;
            }
            self.config.bounce_rules.push(BounceRule {
                pattern,
                category: lower,
                span: line.span,
            });
        }
    }

    fn pattern_list(&mut self, block: &Block) {
        let Some(name) = self.required_arg(block, "a name") else {
            return;
        };
        let mut rules = Vec::new();
        for line in directives_of(block) {
            let field = match line.name.text.to_ascii_lowercase().as_str() {
                "mail-from" => EnvelopeField::MailFrom,
                "rcpt-to" => EnvelopeField::RcptTo,
                other => {
                    let diag = self.error(
                        line.name.span,
                        format!("unknown pattern-list line `{other}`"),
                    );
                    diag.help = Some(
                        did_you_mean(other, ["mail-from", "rcpt-to"])
                            .map(|s| format!("did you mean `{s}`?"))
                            .unwrap_or_else(|| {
                                "lines look like `mail-from /@news\\.example\\.com$/ virtual-mta=pool1`".into()
                            }),
                    );
                    continue;
                }
            };
            let [regex, action] = line.args.as_slice() else {
                self.error(
                    line.span,
                    "a pattern-list line is `mail-from /regex/ virtual-mta=NAME`",
                );
                continue;
            };
            let Some(pattern) = self.pattern(regex) else {
                continue;
            };
            let Some(target) = action
                .text
                .split_once('=')
                .filter(|(k, _)| k.eq_ignore_ascii_case("virtual-mta"))
                .map(|(_, v)| v.to_string())
            else {
                self.error(
                    action.span,
                    format!("unknown pattern-list action `{}`", action.text),
                )
                .help = Some("write `virtual-mta=NAME`".into());
                continue;
            };
            rules.push(RouteRule {
                field,
                pattern,
                virtual_mta: Spanned {
                    value: target,
                    span: action.span,
                },
                span: line.span,
            });
        }
        self.config.pattern_lists.insert(
            name.clone(),
            PatternList {
                name,
                rules,
                span: block.open,
            },
        );
    }

    fn mx_rollups(&mut self, block: &Block) {
        for line in directives_of(block) {
            if !line.name.text.eq_ignore_ascii_case("mx") {
                self.error(
                    line.name.span,
                    format!("unknown line `{}` in `<mx-rollup-list>`", line.name.text),
                )
                .help = Some(
                    "lines look like `mx *.mail.protection.outlook.com hotmail.rollup`".into(),
                );
                continue;
            }
            let (mx, queue, by_ip) = match line.args.as_slice() {
                [mx, queue] => (mx, queue, false),
                [mx, queue, flag] if flag.text.eq_ignore_ascii_case("rollup-by-ip") => {
                    (mx, queue, true)
                }
                _ => {
                    self.error(
                        line.span,
                        "an mx rollup line is `mx HOST-PATTERN QUEUE-NAME [rollup-by-ip]`",
                    );
                    continue;
                }
            };
            self.config.mx_rollups.push(MxRollup {
                mx_pattern: mx.text.to_ascii_lowercase(),
                queue_name: queue.text.clone(),
                by_ip,
                span: line.span,
            });
        }
    }

    // --- cross-references --------------------------------------------------------------------

    fn check_references(&mut self) {
        let mut names: Vec<String> = self.config.virtual_mtas.keys().cloned().collect();
        names.extend(self.config.pools.keys().cloned());
        let vmta_names: Vec<String> = self.config.virtual_mtas.keys().cloned().collect();
        let mut problems: Vec<Diagnostic> = Vec::new();

        for pool in self.config.pools.values() {
            for member in &pool.members {
                if !self.config.virtual_mtas.contains_key(&member.value) {
                    problems.push(dangling(
                        member.span,
                        &format!("pool `{}` names virtual MTA `{}`", pool.name, member.value),
                        &member.value,
                        &vmta_names,
                    ));
                }
            }
        }
        for vmta in self.config.virtual_mtas.values() {
            if let Some(cold) = vmta.settings.get("cold-virtual-mta")
                && let Value::Text(target) = &cold.value
                && !self.config.virtual_mtas.contains_key(target)
            {
                problems.push(dangling(
                    cold.span,
                    &format!("`cold-virtual-mta` names virtual MTA `{target}`"),
                    target,
                    &vmta_names,
                ));
            }
        }
        let lists: Vec<String> = self.config.smtp_pattern_lists.keys().cloned().collect();
        let pattern_lists: Vec<String> = self.config.pattern_lists.keys().cloned().collect();
        let all_domains = self
            .config
            .domains
            .iter()
            .chain(self.config.virtual_mtas.values().flat_map(|v| &v.domains));
        let mut seen_spans: Vec<Span> = Vec::new();
        for domain in all_domains {
            for setting in domain.settings.iter() {
                if seen_spans.contains(&setting.span) {
                    continue; // one macro-expanded block, reported once
                }
                let Value::Text(target) = &setting.value else {
                    continue;
                };
                let (known, what) = match setting.spec.name {
                    "smtp-pattern-list" => (&lists, "smtp pattern list"),
                    "backoff-reroute-to-virtual-mta" | "reroute-to-virtual-mta" => {
                        (&names, "virtual MTA or pool")
                    }
                    _ => continue,
                };
                if !known.contains(target) {
                    seen_spans.push(setting.span);
                    problems.push(dangling(
                        setting.span,
                        &format!("`{}` names {what} `{target}`", setting.spec.name),
                        target,
                        known,
                    ));
                }
            }
        }
        let source_settings = self
            .config
            .source_blocks
            .iter()
            .map(|s| &s.settings)
            .chain(self.config.smtp_users.iter().map(|u| &u.settings))
            .chain(std::iter::once(&self.config.globals));
        for settings in source_settings {
            for setting in settings.iter() {
                let Value::Text(target) = &setting.value else {
                    continue;
                };
                let (known, what) = match setting.spec.name {
                    "default-virtual-mta" => (&names, "virtual MTA or pool"),
                    "pattern-list" => (&pattern_lists, "pattern list"),
                    _ => continue,
                };
                if !known.contains(target) {
                    problems.push(dangling(
                        setting.span,
                        &format!("`{}` names {what} `{target}`", setting.spec.name),
                        target,
                        known,
                    ));
                }
            }
        }
        for list in self.config.pattern_lists.values() {
            for rule in &list.rules {
                if !names.contains(&rule.virtual_mta.value) {
                    problems.push(dangling(
                        rule.virtual_mta.span,
                        &format!(
                            "pattern list `{}` routes to `{}`",
                            list.name, rule.virtual_mta.value
                        ),
                        &rule.virtual_mta.value,
                        &names,
                    ));
                }
            }
        }
        problems.extend(queue::check_queue_to_loops(self.config));
        problems.extend(queue::check_backoff_limits(self.config));
        self.diagnostics.extend(problems);
    }

    fn load_dkim_keys(&mut self) {
        let mut settings: Vec<Setting> = self.config.globals.get_all("domain-key").to_vec();
        for vmta in self.config.virtual_mtas.values() {
            settings.extend(vmta.settings.get_all("domain-key").iter().cloned());
        }
        for domain in &self.config.domains {
            settings.extend(domain.settings.get_all("domain-key").iter().cloned());
        }
        for setting in settings {
            let Value::DomainKey(key) = &setting.value else {
                continue;
            };
            if self.config.dkim_keys.iter().any(|k| k.span == setting.span) {
                continue;
            }
            let base = self.config.sources.file(setting.span.file).path.parent();
            let path = base.unwrap_or(Path::new("")).join(&key.key_file);
            let material = match self.fs.read(&path) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(pem) if pem.contains("PRIVATE KEY-----") => KeyMaterial::Pem(pem),
                    _ => KeyMaterial::StandIn {
                        reason: "the file is not a PEM private key".into(),
                    },
                },
                Err(err) => KeyMaterial::StandIn {
                    reason: err.to_string(),
                },
            };
            if let KeyMaterial::StandIn { reason } = &material {
                let message = format!(
                    "cannot use DKIM key file `{}` for {}/{}: {reason}",
                    path.display(),
                    key.selector,
                    key.domain
                );
                if self.options.live {
                    self.diagnostics.push(
                        Diagnostic::error(setting.span, message)
                            .with_help("live sending signs with the real key; fix the path or the file's permissions"),
                    );
                } else {
                    self.diagnostics.push(
                        Diagnostic::warning(setting.span, message).with_help(
                            "simulation signs with a generated stand-in key instead; `--live` will refuse this",
                        ),
                    );
                }
            }
            self.config.dkim_keys.push(DkimKey {
                key: key.clone(),
                material,
                span: setting.span,
            });
        }
    }
}

fn dangling(span: Span, what: &str, target: &str, known: &[String]) -> Diagnostic {
    let diag = Diagnostic::error(span, format!("{what}, which is not defined"));
    match did_you_mean(target, known.iter().map(String::as_str)) {
        Some(s) => diag.with_help(format!("did you mean `{s}`?")),
        None if known.is_empty() => diag,
        None => diag.with_help(format!("defined names: {}", known.join(", "))),
    }
}

fn directives_of(block: &Block) -> impl Iterator<Item = &DirectiveLine> {
    block.items.iter().filter_map(|item| match item {
        Item::Directive(line) => Some(line),
        Item::Block(_) => None,
    })
}

fn expand_macro(
    raw: &IndexMap<String, (Vec<String>, Span)>,
    name: &str,
    stack: &mut Vec<String>,
) -> Result<Vec<String>, String> {
    if stack.len() > MACRO_DEPTH_MAX {
        return Err(format!(
            "domain macros nested more than {MACRO_DEPTH_MAX} deep"
        ));
    }
    let Some((values, _)) = raw.get(name) else {
        return Err(format!("domain macro `${name}` is not defined"));
    };
    let mut out = Vec::new();
    for value in values {
        if let Some(inner) = value.strip_prefix('$') {
            if stack.iter().any(|s| s == inner) {
                let mut chain = stack.clone();
                chain.push(inner.to_string());
                return Err(format!(
                    "domain macro loop: {}",
                    chain
                        .iter()
                        .map(|s| format!("${s}"))
                        .collect::<Vec<_>>()
                        .join(" -> ")
                ));
            }
            stack.push(inner.to_string());
            let expanded = expand_macro(raw, inner, stack);
            stack.pop();
            out.extend(expanded?);
        } else {
            out.push(value.clone());
        }
        if out.len() > MACRO_EXPANSION_MAX {
            return Err(format!(
                "domain macro `${name}` expands to more than {MACRO_EXPANSION_MAX} domains"
            ));
        }
    }
    Ok(out)
}

pub fn parse_domain_pattern(text: &str) -> Option<DomainPattern> {
    let lower = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if lower == "*" {
        return Some(DomainPattern::Any);
    }
    let (make, rest): (fn(String) -> DomainPattern, &str) =
        if let Some(rest) = lower.strip_prefix("[*.]") {
            (DomainPattern::DomainAndSubdomains, rest)
        } else if let Some(rest) = lower.strip_prefix("*.") {
            (DomainPattern::Subdomains, rest)
        } else {
            (DomainPattern::Exact, lower.as_str())
        };
    value::is_host_name(rest).then(|| make(rest.to_string()))
}

fn parse_domain_key(text: &str) -> Result<DomainKey, ValueError> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    match parts.as_slice() {
        [selector, domain, key_file]
            if !selector.is_empty() && value::is_host_name(domain) && !key_file.is_empty() =>
        {
            Ok(DomainKey {
                selector: selector.to_string(),
                domain: domain.to_ascii_lowercase(),
                key_file: key_file.to_string(),
            })
        }
        _ => Err(ValueError {
            expected: "SELECTOR,DOMAIN,KEY-FILE such as s1,example.com,/etc/pmta/s1.pem",
            found: text.to_string(),
            suggestion: None,
        }),
    }
}

/// Length of the replies a pattern is tried on when it loads (a long reply, as providers send).
const BACKTRACK_PROBE_BYTES: usize = 4096;

/// Whether a pattern that needs fancy-regex's backtracking engine (backreferences,
/// lookarounds, atomic groups, possessive quantifiers) stops at its step limit on a long
/// reply-like text. Patterns without those features run on the linear-time engine and are not
/// tried (they cannot fail).
fn backtracking_failure(source: &str, regex: &fancy_regex::Regex) -> Option<String> {
    let fancy = [
        "(?=", "(?!", "(?<=", "(?<!", "(?>", "\\k<", "++", "*+", "?+", "}+",
    ]
    .iter()
    .any(|marker| source.contains(marker))
        || source
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b'\\' && w[1].is_ascii_digit() && w[1] != b'0');
    if !fancy {
        return None;
    }
    let words = "550 5.7.1 ".to_string() + &"blocked by policy ".repeat(BACKTRACK_PROBE_BYTES / 18);
    let mut probes: Vec<String> = ["a", "0", " ", ".", "x"]
        .iter()
        .map(|c| c.repeat(BACKTRACK_PROBE_BYTES))
        .collect();
    probes.extend(probes.clone().into_iter().map(|p| p + "!"));
    probes.push(words);
    probes
        .iter()
        .find_map(|probe| regex.is_match(probe).err().map(|e| e.to_string()))
}
