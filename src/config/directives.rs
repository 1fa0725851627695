//! The vocabulary of the configuration language: every block tag and directive PowerMTA
//! documents, where each may appear, the kind of value it takes and its documented default.
//!
//! This is a table, not logic. [`lower`](super::lower) consults it to type-check each line;
//! [`queue`](super::queue) consults it for defaults. Facts come from the PowerMTA v5 User's
//! Guide (domain, virtual MTA, source and accounting chapters). A word not listed here is an
//! error. Whether the simulator acts on a directive is not recorded here: the engine's
//! settings reader (`engine::settings::simulated`) declares what it reads, and `check` lists
//! every other directive as having no effect in simulation.

/// A block tag, `<tag arg>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockKind {
    VirtualMta,
    VirtualMtaPool,
    Domain,
    Source,
    SmtpPatternList,
    BounceCategoryPatterns,
    SmtpUser,
    AcctFile,
    Spool,
    MxRollupList,
    PatternList,
    /// Blocks PowerMTA has that the simulator has no use for (inbound processors, HTTP
    /// APIs, address lists). Their contents are kept but not checked line by line.
    SmtpListener,
    BounceProcessor,
    FeedbackLoopProcessor,
    AddressList,
    Dns,
    Proxy,
    EmailPatterns,
    RewriteList,
    SourceGroup,
    DomainKeyList,
    HttpApi,
    /// A tag we do not know; already reported, kept so parsing can go on.
    Unknown,
}

impl BlockKind {
    /// Every known kind (not `Unknown`), for suggestions.
    pub const ALL: &'static [BlockKind] = &[
        BlockKind::VirtualMta,
        BlockKind::VirtualMtaPool,
        BlockKind::Domain,
        BlockKind::Source,
        BlockKind::SmtpPatternList,
        BlockKind::BounceCategoryPatterns,
        BlockKind::SmtpUser,
        BlockKind::AcctFile,
        BlockKind::Spool,
        BlockKind::MxRollupList,
        BlockKind::PatternList,
        BlockKind::SmtpListener,
        BlockKind::BounceProcessor,
        BlockKind::FeedbackLoopProcessor,
        BlockKind::AddressList,
        BlockKind::Dns,
        BlockKind::Proxy,
        BlockKind::EmailPatterns,
        BlockKind::RewriteList,
        BlockKind::SourceGroup,
        BlockKind::DomainKeyList,
        BlockKind::HttpApi,
    ];

    pub fn tag(self) -> &'static str {
        match self {
            BlockKind::VirtualMta => "virtual-mta",
            BlockKind::VirtualMtaPool => "virtual-mta-pool",
            BlockKind::Domain => "domain",
            BlockKind::Source => "source",
            BlockKind::SmtpPatternList => "smtp-pattern-list",
            BlockKind::BounceCategoryPatterns => "bounce-category-patterns",
            BlockKind::SmtpUser => "smtp-user",
            BlockKind::AcctFile => "acct-file",
            BlockKind::Spool => "spool",
            BlockKind::MxRollupList => "mx-rollup-list",
            BlockKind::PatternList => "pattern-list",
            BlockKind::SmtpListener => "smtp-listener",
            BlockKind::BounceProcessor => "bounce-processor",
            BlockKind::FeedbackLoopProcessor => "feedback-loop-processor",
            BlockKind::AddressList => "address-list",
            BlockKind::Dns => "dns",
            BlockKind::Proxy => "proxy",
            BlockKind::EmailPatterns => "email-patterns",
            BlockKind::RewriteList => "rewrite-list",
            BlockKind::SourceGroup => "source-group",
            BlockKind::DomainKeyList => "domain-key-list",
            BlockKind::HttpApi => "http-api",
            BlockKind::Unknown => "?",
        }
    }

    pub fn from_tag(tag: &str) -> Option<BlockKind> {
        BlockKind::ALL
            .iter()
            .copied()
            .find(|k| k.tag().eq_ignore_ascii_case(tag))
    }

    /// Where this block may open: `None` is the top level.
    pub fn parents(self) -> &'static [Option<BlockKind>] {
        match self {
            BlockKind::Domain => &[None, Some(BlockKind::VirtualMta)],
            _ => &[None],
        }
    }

    pub fn allowed_in(self, parent: Option<BlockKind>) -> bool {
        self.parents().contains(&parent)
    }

    /// Blocks whose lines may hold `/regular expressions/` (with spaces and `#` inside).
    pub fn has_regex_lines(self) -> bool {
        matches!(
            self,
            BlockKind::SmtpPatternList
                | BlockKind::BounceCategoryPatterns
                | BlockKind::PatternList
                | BlockKind::EmailPatterns
                | BlockKind::RewriteList
        )
    }

    /// Blocks that are recognized but whose contents the simulator neither checks nor uses.
    pub fn is_opaque(self) -> bool {
        matches!(
            self,
            BlockKind::SmtpListener
                | BlockKind::BounceProcessor
                | BlockKind::FeedbackLoopProcessor
                | BlockKind::AddressList
                | BlockKind::Dns
                | BlockKind::Proxy
                | BlockKind::EmailPatterns
                | BlockKind::RewriteList
                | BlockKind::SourceGroup
                | BlockKind::DomainKeyList
                | BlockKind::HttpApi
                | BlockKind::Unknown
        )
    }

    fn scope(self) -> Option<u16> {
        Some(match self {
            BlockKind::VirtualMta => VM,
            BlockKind::VirtualMtaPool => POOL,
            BlockKind::Domain => DOM,
            BlockKind::Source => SRC,
            BlockKind::SmtpUser => USER,
            BlockKind::AcctFile => ACCT,
            BlockKind::Spool => SPOOL,
            _ => return None,
        })
    }
}

/// Where a directive may be written, as a bit set.
const GLOBAL: u16 = 1;
const VM: u16 = 1 << 1;
const DOM: u16 = 1 << 2;
const SRC: u16 = 1 << 3;
const ACCT: u16 = 1 << 4;
const SPOOL: u16 = 1 << 5;
const USER: u16 = 1 << 6;
const POOL: u16 = 1 << 7;

/// What a directive's value looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Bool,
    /// A non-negative integer.
    Count,
    /// A count, or `unlimited`.
    CountOrUnlimited,
    /// A count in `0..=max`.
    BoundedCount(u64),
    Interval,
    /// A time interval, or `never`.
    IntervalOrNever,
    /// `10m,20m,1h`: used positionally, the last value repeats.
    IntervalList,
    /// `yes`/`no`, or a time interval (e.g. `bounce-upon-no-mx`).
    BoolOrInterval,
    Rate,
    /// `1/day,2/day,3/day`: one rate per day of warmup, the last repeats.
    RateList,
    DataRate,
    Size,
    Address,
    AddressList,
    /// The name of another configuration object (a virtual MTA, pool, pattern list).
    Name,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// `IP HOSTNAME`.
    IpHost,
    /// `CIDR N`: a per-source-IP count; repeatable, one line per network.
    SourceIpCount,
    /// `CIDR RATE`: a per-source-IP rate; repeatable.
    SourceIpRate,
    /// `CIDR DATA-RATE`: a per-source-IP data-volume rate; repeatable.
    SourceIpDataRate,
    /// `SELECTOR,DOMAIN,KEY-FILE`.
    DomainKey,
    /// `IP:PORT`, `[IPV6]:PORT` or `0/0:PORT` (every IPv4 address): where to listen for
    /// SMTP; repeatable, one line per address.
    Listener,
    /// `CIDR monitor|admin|none`: who may use the HTTP management API; repeatable, one
    /// line per network.
    HttpAccess,
    /// `redis://HOST[:PORT][/DB]`: where shared throttles are kept (a pmta-sim extension).
    RedisUrl,
    /// `<acct-file>` `records`: record types, `d,b,t,tq`.
    AcctRecords,
    /// `<acct-file>` `record-fields TYPE FIELD,FIELD,...`; repeatable, one line per type.
    AcctFields,
    /// Free text, kept as written.
    Text,
}

impl ValueKind {
    /// Kinds whose lines add up instead of replacing each other: per-source-IP values,
    /// `smtp-source-host` (a virtual MTA may send from several), `domain-key` and
    /// `smtp-listener`.
    pub fn is_repeatable(self) -> bool {
        self.is_per_source_ip()
            || matches!(
                self,
                ValueKind::IpHost
                    | ValueKind::DomainKey
                    | ValueKind::Listener
                    | ValueKind::HttpAccess
                    | ValueKind::AcctFields
            )
    }

    /// Kinds written once per network and kept as a list instead of replacing each other.
    pub fn is_per_source_ip(self) -> bool {
        matches!(
            self,
            ValueKind::SourceIpCount | ValueKind::SourceIpRate | ValueKind::SourceIpDataRate
        )
    }
}

/// A directive's value when no block sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// No value: the feature is off or the object is absent.
    Unset,
    /// PowerMTA's documented default, written as in a config file.
    Text(&'static str),
    /// The effective value of another directive (`backoff-max-msg-rate` → `max-msg-rate`).
    SameAs(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct DirectiveSpec {
    pub name: &'static str,
    scopes: u16,
    pub kind: ValueKind,
    pub default: DefaultValue,
}

impl DirectiveSpec {
    pub fn allowed_at_top(&self) -> bool {
        self.scopes & GLOBAL != 0
    }

    /// Whether the directive may be written directly inside a block of this kind.
    pub fn allowed_in(&self, block: BlockKind) -> bool {
        block.scope().is_some_and(|s| self.scopes & s != 0)
    }

    /// A `<domain>` directive: part of a queue's effective settings.
    pub fn is_queue_setting(&self) -> bool {
        self.scopes & DOM != 0
    }

    /// Where the directive may appear, in words, for error messages.
    pub fn places(&self) -> String {
        let mut places = Vec::new();
        if self.scopes & GLOBAL != 0 {
            places.push("at the top level".to_string());
        }
        for kind in BlockKind::ALL {
            if kind.scope().is_some_and(|s| self.scopes & s != 0) {
                places.push(format!("inside `<{}>`", kind.tag()));
            }
        }
        places.join(" or ")
    }
}

const fn d(
    name: &'static str,
    scopes: u16,
    kind: ValueKind,
    default: DefaultValue,
) -> DirectiveSpec {
    DirectiveSpec {
        name,
        scopes,
        kind,
        default,
    }
}

use DefaultValue::{SameAs, Text as Def, Unset};
use ValueKind as K;

const YES_NO_IF: &[&str] = &["yes", "no", "true", "false", "if-x-dkim-options-present"];
const DELIVERY_TYPES: &[&str] = &["smtp", "pipe", "file", "discard", "http-delivery"];
const DKIM_ALGORITHMS: &[&str] = &["rsa-sha256", "rsa-sha1", "ed25519-sha256"];
const CANONICALIZATIONS: &[&str] = &["relaxed", "simple"];

/// Every directive pmta-sim recognizes, by name.
pub static DIRECTIVES: &[DirectiveSpec] = &[
    // --- <domain> (also nested in <virtual-mta>): the queue settings -----------------------
    d("max-smtp-out", DOM, K::Count, Def("20")),
    d("backoff-max-smtp-out", DOM, K::Count, Def("20")),
    d("source-ip-max-smtp-out", DOM, K::SourceIpCount, Unset),
    d("smtp-out-rampup-interval", DOM, K::Interval, Def("0")),
    d("connection-idle-timeout", DOM, K::Interval, Def("0")),
    d("max-msg-per-connection", DOM, K::Count, Def("0")),
    d("max-rcpt-per-transaction", DOM, K::Count, Def("1000")),
    d("max-msg-rate", DOM, K::Rate, Def("unlimited")),
    d("backoff-max-msg-rate", DOM, K::Rate, SameAs("max-msg-rate")),
    d("source-ip-max-msg-rate", DOM, K::SourceIpRate, Unset),
    d("max-connect-rate", DOM, K::Rate, Def("unlimited")),
    d(
        "backoff-max-connect-rate",
        DOM,
        K::Rate,
        SameAs("max-connect-rate"),
    ),
    d("source-ip-max-connect-rate", DOM, K::SourceIpRate, Unset),
    d("max-data-volume-rate", DOM, K::DataRate, Def("unlimited")),
    d(
        "backoff-max-data-volume-rate",
        DOM,
        K::DataRate,
        SameAs("max-data-volume-rate"),
    ),
    d(
        "source-ip-max-data-volume-rate",
        DOM,
        K::SourceIpDataRate,
        Unset,
    ),
    d("retry-after", DOM, K::IntervalList, Def("10m")),
    d("backoff-retry-after", DOM, K::IntervalList, Def("1h")),
    d("retry-recipients-after", DOM, K::Interval, Def("10m")),
    d("retry-after-dns-error", DOM, K::Interval, Def("1m")),
    d("retry-upon-new-mail", DOM, K::Bool, Def("false")),
    d("bounce-after", DOM, K::Interval, Def("4d12h")),
    d(
        "backoff-to-normal-after",
        DOM,
        K::IntervalOrNever,
        Def("never"),
    ),
    d(
        "backoff-to-normal-after-delivery",
        DOM,
        K::Bool,
        Def("false"),
    ),
    d(
        "backoff-upon-all-sources-disabled",
        DOM,
        K::Bool,
        Def("false"),
    ),
    d("backoff-notify", DOM, K::AddressList, Unset),
    d(
        "reenable-source-ip-after",
        DOM,
        K::IntervalOrNever,
        Def("never"),
    ),
    d("disabled-source-ip-notify", DOM, K::AddressList, Unset),
    d("backoff-reroute-to-virtual-mta", DOM, K::Name, Unset),
    d("reroute-to-virtual-mta", DOM, K::Name, Unset),
    d("max-cold-virtual-mta-msg", DOM, K::RateList, Def("0/d")),
    d("queue-priority", DOM, K::BoundedCount(100), Def("50")),
    d("smtp-421-means-mx-unavailable", DOM, K::Bool, Def("no")),
    d("smtp-553-means-invalid-mailbox", DOM, K::Bool, Def("yes")),
    d(
        "max-errors-per-connection",
        DOM,
        K::CountOrUnlimited,
        Def("unlimited"),
    ),
    d("bounce-upon-no-mx", DOM, K::BoolOrInterval, Def("false")),
    d("bounce-upon-5xx-greeting", DOM, K::Bool, Def("true")),
    d("bounce-upon-transfer-failure", DOM, K::Bool, Def("false")),
    d(
        "assume-delivery-upon-data-termination-timeout",
        DOM,
        K::Bool,
        Def("false"),
    ),
    d("connect-timeout", DOM, K::Interval, Def("2m")),
    d("smtp-greeting-timeout", DOM, K::Interval, Def("5m")),
    d("data-send-timeout", DOM, K::Interval, Def("3m")),
    d(
        "smtp-data-termination-timeout",
        DOM,
        K::Interval,
        Def("10m"),
    ),
    d("max-events-recorded", DOM, K::Count, Def("10")),
    d("track-recipient-events", DOM, K::Bool, Def("false")),
    d("disable-acct-records", DOM, K::Text, Unset),
    d("smtp-pattern-list", DOM, K::Name, Unset),
    d("type", DOM, K::Choice(DELIVERY_TYPES), Def("smtp")),
    d("use-starttls", DOM, K::Bool, Def("yes")),
    d("require-starttls", DOM, K::Bool, Def("no")),
    // Live mode: verify the server's certificate and name (opportunistic TLS does not).
    d("require-tls-verify", DOM, K::Bool, Def("no")),
    d("smtp-hosts", DOM, K::Text, Unset),
    d("disable-mx-rollup", DOM, K::Bool, Def("false")),
    d("queue-to", DOM, K::Name, Unset),
    d("mx-connection-attempts", DOM, K::Count, Def("10")),
    d("auth-username", DOM, K::Text, Unset),
    d("auth-password", DOM, K::Text, Unset),
    d("use-unencrypted-plain-auth", DOM, K::Bool, Def("no")),
    d("dkim-sign", DOM, K::Choice(YES_NO_IF), Def("no")),
    d(
        "dkim-algorithm",
        DOM,
        K::Choice(DKIM_ALGORITHMS),
        Def("rsa-sha256"),
    ),
    d(
        "dkim-body-canon",
        DOM,
        K::Choice(CANONICALIZATIONS),
        Def("relaxed"),
    ),
    d(
        "dkim-headers-canon",
        DOM,
        K::Choice(CANONICALIZATIONS),
        Def("relaxed"),
    ),
    d("dkim-identity", DOM, K::Text, Def("sender-or-from")),
    d("dkim-identity-fallback", DOM, K::Text, Unset),
    d("dkim-headers", DOM, K::Text, Unset),
    d("dkim-expire-after", DOM, K::IntervalOrNever, Def("never")),
    d("dkim-add-timestamp", DOM, K::Bool, Def("no")),
    d("dkim-add-body-limit", DOM, K::Bool, Def("no")),
    d("dkim-disallow-adding-headers", DOM, K::Bool, Def("no")),
    d("bounce-domain", DOM, K::Text, Unset),
    d("deliver-local-dsn", DOM, K::Bool, Def("yes")),
    d("log-connections", GLOBAL | DOM | SRC, K::Bool, Def("no")),
    d("log-commands", GLOBAL | DOM | SRC, K::Bool, Def("no")),
    d("log-resolution", GLOBAL | DOM, K::Bool, Def("no")),
    d("log-data", GLOBAL | DOM | SRC, K::Bool, Def("no")),
    d("log-transfer-failures", GLOBAL | DOM, K::Bool, Def("no")),
    d("log-tls", GLOBAL | DOM | SRC, K::Bool, Def("no")),
    // --- <virtual-mta> -----------------------------------------------------------------------
    d("smtp-source-host", VM, K::IpHost, Unset),
    d("cold-virtual-mta", VM, K::Name, Unset),
    d("auto-cold-virtual-mta", VM, K::Bool, Def("no")),
    d("domain-key", GLOBAL | VM | DOM, K::DomainKey, Unset),
    d("host-name", GLOBAL | VM, K::Text, Unset),
    // --- <virtual-mta-pool> and <source> ------------------------------------------------------
    d("virtual-mta", POOL, K::Name, Unset),
    d("default-virtual-mta", GLOBAL | SRC | USER, K::Name, Unset),
    d("process-x-virtual-mta", SRC, K::Bool, Def("no")),
    d("pattern-list", SRC, K::Name, Unset),
    d("always-allow-relaying", SRC, K::Bool, Def("no")),
    d("always-allow-api-submission", SRC, K::Bool, Def("no")),
    d("smtp-service", SRC, K::Bool, Def("yes")),
    d("require-auth", SRC, K::Bool, Def("no")),
    d("allow-unencrypted-plain-auth", SRC, K::Bool, Def("no")),
    d("allow-starttls", SRC, K::Bool, Def("yes")),
    d("require-starttls-before-auth", SRC, K::Bool, Def("no")),
    d("process-x-job", SRC, K::Bool, Def("no")),
    d("process-x-envid", SRC, K::Bool, Def("no")),
    d("jobid-header", SRC, K::Text, Unset),
    d("add-message-id-header", SRC, K::Bool, Def("no")),
    d("add-date-header", SRC, K::Bool, Def("no")),
    d("add-received-header", SRC, K::Bool, Def("yes")),
    d("hide-message-source", SRC, K::Bool, Def("no")),
    d("remove-header", SRC, K::Text, Unset),
    d("max-message-size", SRC, K::Size, Unset),
    d("allow-mailmerge", SRC, K::Bool, Def("no")),
    d("deny-relaying", SRC, K::Bool, Def("no")),
    d("password", USER, K::Text, Unset),
    d("source", USER, K::Text, Unset),
    d("authentication-method", USER, K::Text, Unset),
    // --- <acct-file> and <spool> ---------------------------------------------------------------
    d("records", ACCT, K::AcctRecords, Def("d,b")),
    d("record-fields", ACCT, K::AcctFields, Unset),
    d("move-interval", ACCT, K::Interval, Unset),
    d("move-to", ACCT, K::Text, Unset),
    d("max-size", ACCT, K::Size, Unset),
    d("delete-after", ACCT, K::IntervalOrNever, Def("never")),
    d("user-string", ACCT, K::Text, Unset),
    d("retry-interval", ACCT, K::Interval, Unset),
    d("sync", ACCT, K::Bool, Def("no")),
    d("world-readable", ACCT, K::Bool, Def("no")),
    d("delete-file-holders", SPOOL, K::Bool, Def("no")),
    d("deliver-only", SPOOL, K::Bool, Def("no")),
    // --- global ----------------------------------------------------------------------------
    d("postmaster", GLOBAL, K::Address, Unset),
    d("smtp-listener", GLOBAL, K::Listener, Unset),
    d("spool", GLOBAL, K::Text, Unset),
    d("smtp-port", GLOBAL, K::Count, Def("25")),
    d("http-mgmt-port", GLOBAL, K::Count, Unset),
    d("http-access", GLOBAL, K::HttpAccess, Unset),
    d("http-redirect-to-https", GLOBAL, K::Bool, Def("no")),
    d("run-as-root", GLOBAL, K::Bool, Def("no")),
    d("log-file", GLOBAL, K::Text, Unset),
    d("log-rotate", GLOBAL, K::Count, Unset),
    d("sync-msg-create", GLOBAL, K::Bool, Def("yes")),
    d("sync-msg-update", GLOBAL, K::Bool, Def("yes")),
    d(
        "total-max-smtp-out",
        GLOBAL,
        K::CountOrUnlimited,
        Def("unlimited"),
    ),
    d(
        "total-max-smtp-in",
        GLOBAL,
        K::CountOrUnlimited,
        Def("unlimited"),
    ),
    d("allow-priority-interruption", GLOBAL, K::Bool, Def("yes")),
    d(
        "allow-priority-interruption-during-transfer",
        GLOBAL,
        K::Bool,
        Def("no"),
    ),
    d("relay-domain", GLOBAL, K::Text, Unset),
    d("pickup", GLOBAL, K::Text, Unset),
    d("smtp-server-tls-certificate", GLOBAL | SRC, K::Text, Unset),
    d("smtp-server-tls-ciphers", GLOBAL | SRC, K::Text, Unset),
    d("smtp-client-tls-ciphers", GLOBAL, K::Text, Unset),
    d("license-file", GLOBAL, K::Text, Unset),
    // pmta-sim extensions: throttles shared by several nodes through Redis (docs/operating.md).
    d("shared-throttles", GLOBAL, K::RedisUrl, Unset),
    d(
        "shared-throttles-nodes",
        GLOBAL,
        K::BoundedCount(1024),
        Def("1"),
    ),
    d("shared-throttles-node", GLOBAL, K::Text, Unset),
    d("domain-macro", GLOBAL, K::Text, Unset),
];

/// Old or alternative spellings PowerMTA still accepts.
#[derive(Clone, Copy, Debug)]
pub enum Alias {
    /// The same directive under another name; read as `canonical`.
    Synonym { canonical: &'static str },
    /// Superseded: accepted with a warning, no effect; `instead` says what to write.
    Deprecated { instead: &'static str },
}

pub static ALIASES: &[(&str, Alias)] = &[
    (
        "max-rcpt-per-message",
        Alias::Synonym {
            canonical: "max-rcpt-per-transaction",
        },
    ),
    (
        "max-msg-per-hour",
        Alias::Deprecated {
            instead: "max-msg-rate N/h",
        },
    ),
    (
        "backoff-max-msg-per-hour",
        Alias::Deprecated {
            instead: "backoff-max-msg-rate N/h",
        },
    ),
    (
        "max-smtp-out-per-source-ip",
        Alias::Deprecated {
            instead: "source-ip-max-smtp-out CIDR N",
        },
    ),
    (
        "delivery-priority",
        Alias::Deprecated {
            instead: "queue-priority",
        },
    ),
    (
        "route",
        Alias::Deprecated {
            instead: "smtp-hosts",
        },
    ),
    (
        "dk-sign",
        Alias::Deprecated {
            instead: "dkim-sign",
        },
    ),
];

/// Directives people write that PowerMTA does not have, with what they meant. These come
/// from configuration guides on the web (see the fixtures under `tests/fixtures/seeds`).
pub static INVENTED: &[(&str, &str)] = &[
    (
        "backoff-trigger-pattern",
        "backoff is triggered by an `<smtp-pattern-list>` with lines like `reply /421/ mode=backoff`, attached with `smtp-pattern-list NAME` in the `<domain>`",
    ),
    (
        "backoff-retry-interval",
        "did you mean `backoff-retry-after`?",
    ),
    ("retry-interval", "did you mean `retry-after`?"),
    (
        "max-delivery-attempts",
        "PowerMTA expires messages by time: use `bounce-after 4d12h`",
    ),
    ("max-conn", "did you mean `max-smtp-out`?"),
    ("vmta", "did you mean `default-virtual-mta`?"),
    ("allow-relay", "did you mean `always-allow-relaying`?"),
    (
        "dkim-key-file",
        "DKIM keys are declared with `domain-key SELECTOR,DOMAIN,KEY-FILE`",
    ),
    (
        "dkim-key-selector",
        "DKIM keys are declared with `domain-key SELECTOR,DOMAIN,KEY-FILE`",
    ),
    (
        "dkim-selector",
        "DKIM keys are declared with `domain-key SELECTOR,DOMAIN,KEY-FILE`",
    ),
    (
        "acct-file",
        "the accounting file is a block: `<acct-file /var/log/pmta/acct.csv>` ... `</acct-file>`",
    ),
    (
        "virtual-mta",
        "in `<source>` write `default-virtual-mta NAME`; `virtual-mta NAME` lists the members of a `<virtual-mta-pool>`",
    ),
    (
        "smtp-source-ip",
        "did you mean `smtp-source-host IP HOSTNAME`?",
    ),
    ("source", "did you mean `smtp-source-host IP HOSTNAME`?"),
];

/// Block tags people write that PowerMTA does not have, with what they meant.
pub static INVENTED_BLOCKS: &[(&str, &str)] = &[
    (
        "accepted-connect",
        "inbound policy is set in `<source IP-OR-NETWORK>` blocks",
    ),
    (
        "source-pool",
        "group virtual MTAs (one source IP each) in a `<virtual-mta-pool NAME>`",
    ),
    (
        "sender",
        "route by sender with a `<pattern-list NAME>` line `mail-from /REGEX/ virtual-mta=NAME`",
    ),
    (
        "statistics",
        "PowerMTA has no statistics export block; read the accounting file or the HTTP monitor",
    ),
];

pub fn invented_block(tag: &str) -> Option<&'static str> {
    INVENTED_BLOCKS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(tag))
        .map(|(_, help)| *help)
}

pub fn lookup(name: &str) -> Option<&'static DirectiveSpec> {
    DIRECTIVES
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(name))
}

pub fn alias(name: &str) -> Option<Alias> {
    ALIASES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, a)| *a)
}

pub fn invented(name: &str) -> Option<&'static str> {
    INVENTED
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, help)| *help)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::value;

    #[test]
    fn names_are_unique_and_lowercase() {
        let mut names: Vec<&str> = DIRECTIVES.iter().map(|d| d.name).collect();
        names.extend(ALIASES.iter().map(|(n, _)| *n));
        for name in &names {
            assert_eq!(*name, name.to_ascii_lowercase());
        }
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a directive or alias is listed twice");
    }

    #[test]
    fn every_default_parses_as_its_kind() {
        for spec in DIRECTIVES {
            match spec.default {
                DefaultValue::Text(text) => {
                    let ok = match spec.kind {
                        ValueKind::Bool => value::parse_bool(text).is_ok(),
                        ValueKind::Count | ValueKind::BoundedCount(_) => {
                            value::parse_count(text).is_ok()
                        }
                        ValueKind::Interval => value::parse_interval(text).is_ok(),
                        ValueKind::IntervalList => value::parse_interval_list(text).is_ok(),
                        ValueKind::Rate => value::parse_rate(text).is_ok(),
                        ValueKind::DataRate => value::parse_data_rate(text).is_ok(),
                        ValueKind::Choice(words) => words.contains(&text),
                        _ => true,
                    };
                    assert!(ok, "default `{text}` of {} does not parse", spec.name);
                }
                DefaultValue::SameAs(other) => {
                    let target = lookup(other).expect("SameAs names a directive");
                    assert_eq!(target.kind, spec.kind, "{}", spec.name);
                }
                DefaultValue::Unset => {}
            }
        }
    }

    #[test]
    fn invented_names_are_not_real_directives_in_their_usual_place() {
        for (name, _) in INVENTED {
            if let Some(spec) = lookup(name) {
                // `retry-interval` and `source` are real in other blocks; never at the top.
                assert!(!spec.allowed_at_top(), "{name}");
            }
        }
    }

    #[test]
    fn documented_defaults() {
        let default = |name: &str| lookup(name).map(|d| d.default);
        assert_eq!(default("max-smtp-out"), Some(DefaultValue::Text("20")));
        assert_eq!(default("retry-after"), Some(DefaultValue::Text("10m")));
        assert_eq!(default("bounce-after"), Some(DefaultValue::Text("4d12h")));
        assert_eq!(
            default("backoff-retry-after"),
            Some(DefaultValue::Text("1h"))
        );
        assert_eq!(
            default("max-rcpt-per-transaction"),
            Some(DefaultValue::Text("1000"))
        );
    }

    #[test]
    fn domain_blocks_nest_only_in_virtual_mtas() {
        assert!(BlockKind::Domain.allowed_in(None));
        assert!(BlockKind::Domain.allowed_in(Some(BlockKind::VirtualMta)));
        assert!(!BlockKind::Domain.allowed_in(Some(BlockKind::Source)));
        assert!(!BlockKind::VirtualMta.allowed_in(Some(BlockKind::VirtualMta)));
        for kind in BlockKind::ALL {
            assert_eq!(BlockKind::from_tag(kind.tag()), Some(*kind));
        }
    }
}
