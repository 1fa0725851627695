//! The typed configuration: what a checked file means, with every value parsed and every
//! setting tied to the line that wrote it.
//!
//! Owns the data model only. Building it is [`lower`](super::lower)'s job; asking which
//! settings apply to a queue is [`queue`](super::queue)'s. Everything iterated is a `Vec` or
//! an `IndexMap` in file order, so output built from a `Config` is deterministic.

use indexmap::IndexMap;

use super::directives::{BlockKind, DirectiveSpec};
use super::source::{SourceMap, Span, Spanned};
use super::value::{Cidr, DataRate, Interval, IpHost, Rate, Size};

/// A parsed directive value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Count(u64),
    /// `unlimited`, and `0` where PowerMTA reads it so.
    Unlimited,
    Interval(Interval),
    /// `never`.
    Never,
    IntervalList(Vec<Interval>),
    Rate(Rate),
    RateList(Vec<Rate>),
    DataRate(DataRate),
    Size(Size),
    IpHost(IpHost),
    Address(String),
    AddressList(Vec<String>),
    /// A name, a choice word or free text.
    Text(String),
    /// One `source-ip-*` line: the value applies to source IPs in `cidr`.
    PerSourceIp {
        cidr: Cidr,
        value: Box<Value>,
    },
    /// The merged `source-ip-*` lines of a queue: one [`Value::PerSourceIp`] per network.
    PerSourceIpList(Vec<Value>),
    DomainKey(DomainKey),
    /// `""`: clears an inherited value, so the directive falls back to its default.
    Cleared,
}

impl Value {
    /// The JSON form promised by `check --explain --json` (see README, "Explain JSON").
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Value::Bool(b) => json!(b),
            Value::Count(n) => json!(n),
            Value::Unlimited | Value::Never | Value::Cleared => serde_json::Value::Null,
            Value::Interval(i) => json!(i.seconds),
            Value::IntervalList(list) => json!(list.iter().map(|i| i.seconds).collect::<Vec<_>>()),
            Value::Rate(rate) => rate_json(*rate),
            Value::RateList(list) => {
                serde_json::Value::Array(list.iter().map(|r| rate_json(*r)).collect())
            }
            Value::DataRate(DataRate::Unlimited) => serde_json::Value::Null,
            Value::DataRate(DataRate::Limit { bytes, per_seconds }) => {
                json!({"bytes": bytes, "per_seconds": per_seconds})
            }
            Value::Size(size) => json!(size.bytes),
            Value::IpHost(ip_host) => json!(format!("{} {}", ip_host.ip, ip_host.host)),
            Value::Address(a) | Value::Text(a) => json!(a),
            Value::AddressList(list) => json!(list),
            Value::PerSourceIp { cidr, value } => json!({ cidr.to_string(): value.to_json() }),
            Value::PerSourceIpList(list) => {
                let mut object = serde_json::Map::new();
                for item in list {
                    if let Value::PerSourceIp { cidr, value } = item {
                        object.insert(cidr.to_string(), value.to_json());
                    }
                }
                serde_json::Value::Object(object)
            }
            Value::DomainKey(key) => {
                json!(format!("{},{},{}", key.selector, key.domain, key.key_file))
            }
        }
    }

    /// The value as it would be written in a config file.
    pub fn to_config_text(&self) -> String {
        match self {
            Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
            Value::Count(n) => n.to_string(),
            Value::Unlimited => "unlimited".to_string(),
            Value::Interval(i) => i.to_string(),
            Value::Never => "never".to_string(),
            Value::IntervalList(list) => join(list),
            Value::Rate(rate) => rate.to_string(),
            Value::RateList(list) => join(list),
            Value::DataRate(rate) => rate.to_string(),
            Value::Size(size) => size.to_string(),
            Value::IpHost(ip_host) => format!("{} {}", ip_host.ip, ip_host.host),
            Value::Address(a) | Value::Text(a) => a.clone(),
            Value::AddressList(list) => list.join(", "),
            Value::PerSourceIp { cidr, value } => format!("{cidr} {}", value.to_config_text()),
            Value::PerSourceIpList(list) => list
                .iter()
                .map(Value::to_config_text)
                .collect::<Vec<_>>()
                .join("; "),
            Value::DomainKey(key) => format!("{},{},{}", key.selector, key.domain, key.key_file),
            Value::Cleared => "\"\"".to_string(),
        }
    }
}

fn rate_json(rate: Rate) -> serde_json::Value {
    match rate {
        Rate::Unlimited => serde_json::Value::Null,
        Rate::Limit { count, per_seconds } => {
            serde_json::json!({"count": count, "per_seconds": per_seconds})
        }
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One directive line, typed.
#[derive(Clone, Debug)]
pub struct Setting {
    pub spec: &'static DirectiveSpec,
    pub value: Value,
    /// The whole line, for `FILE:LINE` provenance.
    pub span: Span,
}

/// The directives of one scope (the top level, or one block), in file order. A directive
/// written twice keeps its last value, except repeatable kinds (per-source-IP values,
/// `smtp-source-host`, `domain-key`), which accumulate.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    entries: IndexMap<&'static str, Vec<Setting>>,
}

impl Settings {
    pub fn insert(&mut self, setting: Setting) {
        let entry = self.entries.entry(setting.spec.name).or_default();
        if !setting.spec.kind.is_repeatable() {
            entry.clear();
        }
        entry.push(setting);
    }

    /// The last value written for `name`.
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.entries.get(name).and_then(|v| v.last())
    }

    /// Every value written for `name` (several only for per-source-IP directives).
    pub fn get_all(&self, name: &str) -> &[Setting] {
        self.entries.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Setting> {
        self.entries.values().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `domain-key SELECTOR,DOMAIN,KEY-FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainKey {
    pub selector: String,
    pub domain: String,
    pub key_file: String,
}

/// Where a DKIM private key comes from once the configuration is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyMaterial {
    /// The PEM text read from the key file.
    Pem(String),
    /// The key file could not be read (simulation only): the engine signs with a stand-in
    /// key it generates from the scenario seed, and `check` says so.
    StandIn { reason: String },
}

#[derive(Clone, Debug)]
pub struct DkimKey {
    pub key: DomainKey,
    pub material: KeyMaterial,
    pub span: Span,
}

/// A `<domain PATTERN>` block's pattern, after macro expansion.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DomainPattern {
    /// `example.com`: that domain only.
    Exact(String),
    /// `*.example.com`: subdomains only.
    Subdomains(String),
    /// `[*.]example.com`: the domain and its subdomains.
    DomainAndSubdomains(String),
    /// `*`: every domain.
    Any,
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Subdomains(d) => write!(f, "*.{d}"),
            DomainPattern::DomainAndSubdomains(d) => write!(f, "[*.]{d}"),
            DomainPattern::Any => f.write_str("*"),
        }
    }
}

/// One `<domain>` block (a macro-expanded block yields one per expansion).
#[derive(Clone, Debug)]
pub struct DomainBlock {
    pub pattern: DomainPattern,
    /// True when the pattern came from a `$macro`: a block that names the domain itself
    /// beats one that reached it through a macro.
    pub from_macro: bool,
    pub settings: Settings,
    /// The `<domain ...>` tag.
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct VirtualMta {
    pub name: String,
    pub settings: Settings,
    /// `<domain>` blocks nested in this virtual MTA, in file order.
    pub domains: Vec<DomainBlock>,
    pub span: Span,
}

impl VirtualMta {
    /// The source IPs and EHLO names from `smtp-source-host`.
    pub fn source_hosts(&self) -> Vec<&IpHost> {
        self.settings
            .get_all("smtp-source-host")
            .iter()
            .filter_map(|s| match &s.value {
                Value::IpHost(h) => Some(h),
                _ => None,
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct Pool {
    pub name: String,
    pub members: Vec<Spanned<String>>,
    pub span: Span,
}

/// What a matching `reply` pattern does to the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternAction {
    /// `mode=backoff` / `mode=normal`.
    Mode(QueueMode),
    /// `backoff-to-normal-after=T`: overrides the domain's value for this backoff.
    BackoffToNormalAfter(Option<Interval>),
    /// `bounce-queue`: bounce every message in the queue.
    BounceQueue,
    /// `disable-source-ip`: stop using the source IP for this queue.
    DisableSourceIp,
    /// `reenable-after=T` for `disable-source-ip`.
    ReenableAfter(Option<Interval>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueMode {
    Normal,
    Backoff,
}

/// A `/regex/` from a pattern block. Matching is case-insensitive unless the pattern turns
/// it off with `(?-i)`, as in PowerMTA.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub source: String,
    pub regex: fancy_regex::Regex,
}

#[derive(Clone, Debug)]
pub struct ReplyRule {
    pub pattern: Pattern,
    pub actions: Vec<PatternAction>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct SmtpPatternList {
    pub name: String,
    pub rules: Vec<ReplyRule>,
    pub span: Span,
}

/// PowerMTA's bounce categories.
pub const BOUNCE_CATEGORIES: &[&str] = &[
    "bad-mailbox",
    "bad-domain",
    "inactive-mailbox",
    "invalid-sender",
    "quota-issues",
    "spam-related",
    "virus-related",
    "content-related",
    "policy-related",
    "protocol-errors",
    "routing-errors",
    "relaying-issues",
    "bad-configuration",
    "no-answer-from-host",
    "bad-connection",
    "message-expired",
    "success",
    "other",
];

/// `/regex/ category`: the first matching rule classifies a reply.
#[derive(Clone, Debug)]
pub struct BounceRule {
    pub pattern: Pattern,
    pub category: String,
    pub span: Span,
}

/// Which envelope field a `<pattern-list>` line tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeField {
    MailFrom,
    RcptTo,
}

/// `mail-from /re/ virtual-mta=NAME`: route matching messages to a virtual MTA or pool.
#[derive(Clone, Debug)]
pub struct RouteRule {
    pub field: EnvelopeField,
    pub pattern: Pattern,
    pub virtual_mta: Spanned<String>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct PatternList {
    pub name: String,
    pub rules: Vec<RouteRule>,
    pub span: Span,
}

/// `mx HOST-PATTERN QUEUE-NAME [rollup-by-ip]`.
#[derive(Clone, Debug)]
pub struct MxRollup {
    pub mx_pattern: String,
    pub queue_name: String,
    pub by_ip: bool,
    pub span: Span,
}

/// `<source IP|{name}|0/0>`: injection policy; the first match wins.
#[derive(Clone, Debug)]
pub struct SourceBlock {
    pub selector: String,
    pub settings: Settings,
    pub span: Span,
}

/// A block kept whole: `<acct-file>`, `<spool>`, `<smtp-user>`.
#[derive(Clone, Debug)]
pub struct NamedBlock {
    pub name: String,
    pub settings: Settings,
    pub span: Span,
}

/// A directive or block that is accepted but that the simulator does not act on.
#[derive(Clone, Debug)]
pub struct NoEffect {
    pub what: String,
    pub span: Span,
}

/// One directive line as written: its canonical name and the block it is in (`None` at the
/// top level), so the directives the simulator does not read can be listed.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub name: &'static str,
    pub block: Option<BlockKind>,
    pub span: Span,
}

/// A whole checked configuration.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub sources: SourceMap,
    pub globals: Settings,
    pub virtual_mtas: IndexMap<String, VirtualMta>,
    pub pools: IndexMap<String, Pool>,
    /// Top-level `<domain>` blocks, in file order.
    pub domains: Vec<DomainBlock>,
    pub smtp_pattern_lists: IndexMap<String, SmtpPatternList>,
    /// All `<bounce-category-patterns>` rules, in file order.
    pub bounce_rules: Vec<BounceRule>,
    pub pattern_lists: IndexMap<String, PatternList>,
    pub mx_rollups: Vec<MxRollup>,
    pub source_blocks: Vec<SourceBlock>,
    pub acct_files: Vec<NamedBlock>,
    pub spools: Vec<NamedBlock>,
    pub smtp_users: Vec<NamedBlock>,
    pub dkim_keys: Vec<DkimKey>,
    /// `domain-macro NAME a, b, c`, expanded (nested macros resolved).
    pub domain_macros: IndexMap<String, Vec<String>>,
    /// Accepted with no effect whatever the simulator reads: deprecated spellings and the
    /// blocks it has no use for.
    pub no_effect: Vec<NoEffect>,
    /// Every directive line accepted, in file order.
    pub written: Vec<Written>,
}

impl Config {
    /// What `check` lists as "accepted, no effect in simulation": the lines whose directive
    /// the simulator does not read where it is written (`simulated` holds `(block, name)`
    /// pairs, `None` for the top level), with deprecated spellings and unused blocks, in
    /// file order.
    pub fn no_effect_in_simulation(
        &self,
        simulated: &[(Option<BlockKind>, &str)],
    ) -> Vec<NoEffect> {
        let mut out = self.no_effect.clone();
        for written in &self.written {
            let read = simulated
                .iter()
                .any(|(block, name)| *block == written.block && *name == written.name);
            if !read {
                out.push(NoEffect {
                    what: written.name.to_string(),
                    span: written.span,
                });
            }
        }
        out.sort_by_key(|n| n.span);
        // A line under a macro-expanded `<domain>` is lowered once per expansion.
        out.dedup_by(|a, b| a.span == b.span && a.what == b.what);
        out
    }
}
