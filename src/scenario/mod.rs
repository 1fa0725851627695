//! Scenario files (`scenarios/*.toml`, format v1): what a simulated run sends, to whom, for
//! how long, with which faults and expectations.
//!
//! Owns parsing and validation (unknown keys and bad values are errors with `FILE:LINE:COL`)
//! and the workload generator, which turns `[[workload]]` streams into timed injections from
//! the scenario seed. Pure: it reads no files (the caller passes the text) and no clock; it
//! must not know how the run is driven.

mod check;
pub mod expect;
mod model;
pub mod shape;
mod workload;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::config::Severity;
use crate::config::value::{self, Rate};
use crate::engine::BackoffClock;
use crate::smtp::Reply;
use crate::time::Time;

pub use check::check_against;
pub use expect::{Expectation, Filter, Metric};
pub use model::parse_model;
pub use workload::{Generated, RECIPIENTS_PER_MESSAGE_MAX, Workload};

/// The scenario format version this code reads.
pub const FORMAT_VERSION: u32 = 1;
/// Longest simulated run: a year.
pub const DURATION_MAX_S: u64 = 366 * 86_400;
/// Most simulated providers, and MX hosts per provider (their addresses are 198.18.I.M).
pub const ISPS_MAX: usize = 250;
pub const MX_PER_ISP_MAX: usize = 250;
/// Most messages one scenario may inject.
pub const MESSAGES_MAX: u64 = 50_000_000;

/// A problem with a scenario or model file, at `FILE:LINE:COL`: an error stops the run, a
/// warning is printed and the run goes on.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{file}:{line}:{column}: {}: {message}", severity.label())]
pub struct ScenarioError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub severity: Severity,
}

impl ScenarioError {
    /// An error about a whole file (it could not be read, say): at its first line.
    pub fn in_file(file: &Path, message: impl Into<String>) -> ScenarioError {
        ScenarioError {
            file: file.display().to_string(),
            line: 1,
            column: 1,
            message: message.into(),
            severity: Severity::Error,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Whether `name` can name a file or directory on its own: letters, digits, `-`, `_` and `.`,
/// not starting with a dot (so no `..`, no separator, nothing hidden), at most 100 bytes.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The last second a run may reach: 9999-12-31T23:59:59Z (acct.csv writes four-digit years).
pub const TIME_MAX_S: u64 = 253_402_300_799;
/// A run goes on this long after `duration` to let the simulator drain (see the driver).
pub const DRAIN_S: u64 = 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Spanned<String>,
    seed: u64,
    duration: Spanned<String>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    start_time: Spanned<String>,
    #[serde(default)]
    config: Option<Spanned<String>>,
    #[serde(default)]
    config_inline: Option<String>,
    #[serde(default)]
    latency_ms: Option<Spanned<[u64; 2]>>,
    #[serde(default)]
    tick_ms: Option<Spanned<u64>>,
    #[serde(default)]
    isps: IndexMap<String, Spanned<RawIsp>>,
    #[serde(default)]
    workload: Vec<Spanned<RawWorkload>>,
    #[serde(default)]
    fault: Vec<Spanned<RawFault>>,
    #[serde(default)]
    expect: Vec<Spanned<expect::RawExpect>>,
    #[serde(default)]
    sender: Option<Spanned<RawSender>>,
    #[serde(default)]
    dns_txt: Vec<RawTxt>,
    #[serde(default)]
    engine: Option<Spanned<RawEngine>>,
    #[serde(default)]
    identity: Vec<Spanned<RawIdentity>>,
}

/// `[[identity]]`: the history one source IP, /24 or sending domain has with every provider,
/// or with one (`isp`), overriding the provider's `history` for that identity alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default)]
    source_ip: Option<String>,
    #[serde(default)]
    netblock: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    isp: Option<Spanned<String>>,
    #[serde(default)]
    history: Option<Spanned<String>>,
    #[serde(default)]
    reputation: Option<f64>,
    #[serde(default)]
    clean_days: Option<u32>,
}

/// `[engine]`: choices PowerMTA's documentation leaves open, made per scenario.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    #[serde(default)]
    backoff_clock: Option<String>,
    /// Engine nodes sending for the same source IPs (with `shared-throttles`, one set of
    /// limits among them).
    #[serde(default)]
    nodes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSender {
    #[serde(default)]
    spf: Option<String>,
    #[serde(default)]
    dmarc: Option<bool>,
    #[serde(default)]
    ptr: Option<bool>,
    #[serde(default)]
    publish_dkim_keys: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTxt {
    name: String,
    value: String,
}

/// What the sending domains publish for SPF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpfPosture {
    /// `v=spf1 ip4:<every source IP> -all`.
    Pass,
    /// A record that leaves the source IPs out (`-all` fails them).
    Fail,
    /// No SPF record.
    None,
}

/// The sender's authentication posture: what the simulated DNS publishes for the sending
/// domains and source IPs (the driver builds the zone; receivers verify against it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderPosture {
    pub spf: SpfPosture,
    /// `_dmarc.<domain>`: `v=DMARC1; p=none`.
    pub dmarc: bool,
    /// Each source IP has a PTR name (`mtaN.<first sending domain>`) resolving back to it.
    pub ptr: bool,
    /// Publish the engine's DKIM public keys (stand-in keys) in the simulated DNS.
    pub publish_dkim_keys: bool,
    /// Extra TXT records (`selector._domainkey.domain` → `v=DKIM1; ...`), which win over the
    /// published keys: a wrong key here is a broken DKIM setup.
    pub dns_txt: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIsp {
    #[serde(default)]
    model: Option<Spanned<String>>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    mx: Vec<String>,
    #[serde(default)]
    max_connections_per_ip: Option<u64>,
    #[serde(default)]
    max_messages_per_connection: Option<u64>,
    #[serde(default)]
    max_recipients_per_transaction: Option<u64>,
    #[serde(default)]
    rate_limit: Option<Spanned<RawRateLimit>>,
    #[serde(default)]
    greylist: Option<Spanned<RawGreylist>>,
    #[serde(default)]
    reject_unknown_users: Option<bool>,
    #[serde(default)]
    starttls: Option<bool>,
    #[serde(default)]
    fixed_reply: Option<Spanned<RawFixedReply>>,
    /// The sender's standing with a modelled provider at the start: the throttle's hourly
    /// capacity per source IP (a cold IP is the model's value; a warm one is higher).
    #[serde(default)]
    capacity_per_ip_per_hour: Option<u64>,
    /// Lower a model's bulk-sender threshold (to exercise bulk rules at small volume).
    #[serde(default)]
    bulk_threshold_per_day: Option<u64>,
    /// The sender's history with the provider: cold, warm or damaged.
    #[serde(default)]
    history: Option<Spanned<String>>,
    /// The starting reputation score (0..1), overriding the history's.
    #[serde(default)]
    reputation: Option<f64>,
    /// Clean sending days already behind every source IP and domain.
    #[serde(default)]
    clean_days: Option<u32>,
    /// Whether the sender enrolled in the provider's complaint feedback loop (default yes).
    #[serde(default)]
    feedback_loop: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_ip: String,
    reply: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGreylist {
    delay: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixedReply {
    phase: String,
    reply: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    vmta: Spanned<String>,
    mail_from: String,
    #[serde(default)]
    messages: Option<u64>,
    #[serde(default)]
    daily: Option<Vec<u64>>,
    #[serde(default)]
    growth: Option<RawGrowth>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    tz: Option<String>,
    #[serde(default)]
    weekdays: Option<Vec<String>>,
    #[serde(default)]
    engaged_share: Option<f64>,
    #[serde(default)]
    engaged_engagement: Option<f64>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    over: Option<String>,
    #[serde(default)]
    rate: Option<String>,
    #[serde(default)]
    recipients_per_message: Option<u32>,
    #[serde(default)]
    size: Option<String>,
    domains: IndexMap<String, f64>,
    #[serde(default)]
    unknown_user_rate: Option<f64>,
    #[serde(default)]
    full_mailbox_rate: Option<f64>,
    #[serde(default)]
    disabled_rate: Option<f64>,
    #[serde(default)]
    complaint_rate: Option<f64>,
    #[serde(default)]
    engagement: Option<f64>,
    #[serde(default)]
    one_click_unsubscribe: Option<bool>,
    #[serde(default)]
    header_from: Option<String>,
}

/// `growth = { start = 200, factor = 1.4, max = 100000 }`: day n sends start × factorⁿ.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrowth {
    start: u64,
    factor: f64,
    max: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: String,
    #[serde(default)]
    isp: Option<String>,
    #[serde(default)]
    source_ip: Option<Spanned<String>>,
    #[serde(default)]
    mx: Option<String>,
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    reply: Option<String>,
    at: String,
    #[serde(rename = "for")]
    for_: String,
}

/// Where a receiver answers with a chosen reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SmtpPhase {
    Greeting,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    DataEnd,
}

impl SmtpPhase {
    pub fn parse(text: &str) -> Option<SmtpPhase> {
        Some(match text {
            "greeting" | "connect" => SmtpPhase::Greeting,
            "ehlo" => SmtpPhase::Ehlo,
            "mail" => SmtpPhase::Mail,
            "rcpt" => SmtpPhase::Rcpt,
            "data" => SmtpPhase::Data,
            "data_end" | "end_of_data" => SmtpPhase::DataEnd,
            _ => return None,
        })
    }
}

/// A receiver's per-source-IP rate limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_ip: Rate,
    pub reply: Reply,
}

/// How a simulated provider behaves (the generic model; provider models refine it).
#[derive(Clone, Debug, PartialEq)]
pub struct IspSpec {
    pub name: String,
    pub domains: Vec<String>,
    /// MX host names, in preference order.
    pub mx: Vec<String>,
    pub max_connections_per_ip: Option<u64>,
    pub max_messages_per_connection: Option<u64>,
    pub max_recipients_per_transaction: Option<u64>,
    pub rate_limit: Option<RateLimit>,
    pub greylist: Option<Greylist>,
    /// A receiver that answers MAIL with a 421 after every so many messages, for a while.
    pub pause: Option<Pause>,
    pub reject_unknown_users: bool,
    pub starttls: bool,
    pub fixed_reply: Option<(SmtpPhase, Reply)>,
    /// Reputation-driven throttling (provider models).
    pub throttle: Option<Throttle>,
    /// The provider's own wording for its caps and rejections.
    pub replies: IspReplies,
    /// After `max_messages_per_connection`, close without a word (Yahoo) instead of 421.
    pub close_silently_after_max_messages: bool,
    /// Most messages one mailbox receives in a minute (Gmail: 60 [A]).
    pub messages_per_mailbox_per_minute: Option<u64>,
    /// A cold source IP's connection cap, which grows with the IP's reputation as its
    /// hourly capacity does, up to `max_connections_per_ip` (Outlook.com [A/D]).
    pub max_connections_per_ip_cold: Option<u64>,
    /// Answered at MAIL FROM on a connection without TLS (a provider that requires it).
    pub require_tls: Option<Reply>,
    /// How complaints reach the sender.
    pub feedback: Feedback,
    /// The provider's authentication rules (2024+ bulk-sender requirements).
    pub auth: Option<AuthRules>,
    /// How the provider scores senders day by day, and when it blocks them.
    pub reputation: Option<Reputation>,
    /// The sender's standing with this provider when the run starts.
    pub history: History,
    /// Identities whose standing differs from `history` (`[[identity]]`): the reputation
    /// ledger's key (`ip:…`, `net:…/24`, `domain:…`) and its own history, later entries
    /// winning.
    pub identities: Vec<(String, History)>,
    /// Wrap replies the provider's way: lines of at most this many characters, each with
    /// the code repeated (Gmail: `421-4.7.28 ...`), 0 for one line.
    pub reply_wrap_chars: usize,
    /// Appended to every reply that is not positive (Gmail: ` - gsmtp`).
    pub reply_suffix: String,
}

/// The daily reputation update of reference §4.5: `r ← r + α·(q − r)` with the quality
/// target `q = 1 − w_c·max(0, c − c_good)/(c_bad − c_good) − w_u·u/u_bad − w_e·(1 − e)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Reputation {
    /// The neutral score of an identity the provider has never seen.
    pub start: f64,
    /// α: how far a day moves the score toward the day's quality.
    pub daily_step: f64,
    pub complaint_good: f64,
    /// At or over this complaint rate the day's quality is 0 and the score may not rise for
    /// `mitigation_days`.
    pub complaint_bad: f64,
    pub mitigation_days: u32,
    /// The unknown-user rate that costs a whole `weight_unknown`.
    pub unknown_bad: f64,
    pub weight_complaints: f64,
    pub weight_unknown: f64,
    pub weight_engagement: f64,
    /// Under this score a source IP is blocked.
    pub block_below: f64,
    pub block_phase: SmtpPhase,
    pub block_reply: Reply,
    /// Complaints multiply by this for bulk mail without one-click unsubscribe headers
    /// (recipients who cannot unsubscribe report spam instead).
    pub no_unsubscribe_complaint_factor: f64,
}

impl Default for Reputation {
    fn default() -> Reputation {
        Reputation {
            start: 0.5,
            daily_step: 0.15,
            complaint_good: 0.001,
            complaint_bad: 0.003,
            mitigation_days: 7,
            unknown_bad: 0.02,
            weight_complaints: 1.0,
            weight_unknown: 0.5,
            weight_engagement: 0.3,
            block_below: 0.1,
            block_phase: SmtpPhase::Mail,
            block_reply: Reply::new(
                550,
                Some([5, 7, 1]),
                "Service unavailable, sending IP blocked",
            ),
            no_unsubscribe_complaint_factor: 1.0,
        }
    }
}

/// A sender's standing with a provider at the start of a run, for every source IP and
/// sending domain: `cold` (never seen), `warm` (weeks of clean sending), `damaged`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// `None`: the model's neutral score.
    pub score: Option<f64>,
    pub clean_days: u32,
    pub mitigation_wait_days: u32,
}

impl History {
    pub fn named(name: &str) -> Option<History> {
        Some(match name {
            "cold" => History::default(),
            // Three weeks of clean days and a good score: capacity near the model's ceiling.
            "warm" => History {
                score: Some(0.8),
                clean_days: 21,
                mitigation_wait_days: 0,
            },
            // A complaint spike last week: a low score still inside the mitigation wait.
            "damaged" => History {
                score: Some(0.15),
                clean_days: 0,
                mitigation_wait_days: 7,
            },
            _ => return None,
        })
    }
}

/// Authentication a provider demands, checked at the end of data (the 2024+ sender rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRules {
    /// Messages a day from one sending domain that make it a bulk sender, for good.
    pub bulk_threshold_per_day: u64,
    pub enforcement: Enforcement,
    /// Checked in order; the first unmet rule answers.
    pub rules: Vec<AuthRule>,
}

/// Whether a provider answers an unmet rule with its temporary or its permanent reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    Temporary,
    Permanent,
    /// Temporary replies for `permanent_after_s` after a sending domain first fails a rule,
    /// permanent ones after that (Gmail since November 2025: "temporary and permanent").
    TempThenPerm {
        permanent_after_s: u64,
    },
}

/// One requirement, who it applies to, and the provider's words when it is not met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRule {
    pub require: Requirement,
    /// Only for senders over the bulk threshold.
    pub bulk_only: bool,
    pub temporary: Reply,
    pub permanent: Reply,
}

/// What a rule checks, each verified by the receiver (DKIM, SPF, DMARC and PTR with
/// mail-auth against the simulated DNS; TLS from the session; headers from the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    SpfOrDkim,
    Spf,
    Dkim,
    /// A DMARC record with a policy for the From: domain.
    DmarcRecord,
    /// DMARC passes: SPF or DKIM passes aligned with the From: domain.
    DmarcAligned,
    /// The source IP has a PTR record whose name resolves back to it.
    Ptr,
    Tls,
    /// RFC 8058 `List-Unsubscribe-Post: List-Unsubscribe=One-Click` with a `List-Unsubscribe`.
    OneClickUnsubscribe,
}

impl Requirement {
    pub const NAMES: [&'static str; 8] = [
        "spf_or_dkim",
        "spf",
        "dkim",
        "dmarc_record",
        "dmarc_aligned",
        "ptr",
        "tls",
        "one_click_unsubscribe",
    ];

    pub fn parse(text: &str) -> Option<Requirement> {
        Some(match text {
            "spf_or_dkim" => Requirement::SpfOrDkim,
            "spf" => Requirement::Spf,
            "dkim" => Requirement::Dkim,
            "dmarc_record" => Requirement::DmarcRecord,
            "dmarc_aligned" => Requirement::DmarcAligned,
            "ptr" => Requirement::Ptr,
            "tls" => Requirement::Tls,
            "one_click_unsubscribe" => Requirement::OneClickUnsubscribe,
            _ => return None,
        })
    }
}

/// Greylisting as postgrey does it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greylist {
    pub delay_s: u64,
    /// A triplet not retried successfully within this long starts over.
    pub retry_window_s: u64,
    /// After this many passes (counted at most once per `whitelist_spacing_s`) the client IP
    /// is no longer greylisted; 0 never.
    pub whitelist_after: u32,
    pub whitelist_spacing_s: u64,
}

/// A receiver that takes `after_messages` messages (counted at the end of DATA, from every
/// client), then answers each MAIL with `reply` and closes for `duration_s` (0: for good),
/// then takes `after_messages` more: the project's aiosmtpd receiver's `--fail-after N
/// --fail-for SECS` (tests/live/receiver.py), which the live twin test runs against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    pub after_messages: u64,
    pub duration_s: u64,
    pub reply: Reply,
}

/// How a provider tells a sender about complaints (reference §4.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feedback {
    /// Per-complaint reports (ARF), and what the sender must have enrolled for them.
    pub reports: Reports,
    /// The provider shows the sender a daily spam rate (Gmail's Postmaster Tools).
    pub aggregate_spam_rate: bool,
    /// A report trails its delivery by a delay drawn between these (log-uniform: most come
    /// within hours, some after days).
    pub delay_min_s: u64,
    pub delay_max_s: u64,
    /// The sender enrolled in the feedback loop (the scenario's `feedback_loop`).
    pub enrolled: bool,
}

impl Default for Feedback {
    /// No reports, no aggregate: a receiver the sender hears nothing from.
    fn default() -> Feedback {
        Feedback {
            reports: Reports::None,
            aggregate_spam_rate: false,
            delay_min_s: 300,
            delay_max_s: 2 * 86_400,
            enrolled: true,
        }
    }
}

impl Feedback {
    /// `reports`, `aggregate` or `none`: what a sender sees of its complaints.
    pub fn kind(&self) -> &'static str {
        match (&self.reports, self.aggregate_spam_rate) {
            (Reports::PerComplaint(_), _) => "reports",
            (Reports::None, true) => "aggregate",
            (Reports::None, false) => "none",
        }
    }
}

/// Per-complaint feedback reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reports {
    None,
    /// One report per complaint, for senders enrolled as this says.
    PerComplaint(Enrolment),
}

/// What a feedback loop reports on once the sender enrolled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrolment {
    /// Every enrolled sender's mail.
    Sender,
    /// Only mail with a verified DKIM signature of an enrolled domain (Yahoo's CFL).
    DkimDomain,
    /// Mail from the enrolled source IPs (Microsoft's JMRP).
    SourceIp,
}

/// Hourly capacity per key, and a penalty window once it is exceeded. Capacities count
/// messages: each message the provider accepts at the end of DATA counts one, as senders
/// and the reference's warm-up figures (§2.10, §4.5) count them. The throttle answers at its
/// `phase`; before the end of DATA it cannot know which messages will be accepted, so it also
/// counts those it has let start (see `isp::Provider`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    pub messages_per_ip_per_hour: u64,
    pub messages_per_netblock_per_hour: Option<u64>,
    /// Where the throttle answers (Gmail: end of data; Yahoo: MAIL FROM).
    pub phase: SmtpPhase,
    pub reply_ip: Reply,
    pub reply_netblock: Reply,
    /// Hourly capacity of a DKIM signing domain (the envelope sender's domain for unsigned
    /// mail), grown by that domain's reputation like an IP's; only at the end of data.
    pub messages_per_domain_per_hour: Option<u64>,
    pub reply_domain: Reply,
    /// The penalty is drawn between these, from the provider's seeded generator.
    pub penalty_min_s: u64,
    pub penalty_max_s: u64,
    /// An attempt during the penalty extends it to at least now + this.
    pub early_retry_extension_s: u64,
    /// The spike rule (reference §4.5): an hour whose volume from an IP is this many times
    /// the mean of the same hour over the trailing 7 days is throttled whatever the
    /// capacity. In percent of the mean (200 = twice).
    pub spike_percent: Option<u64>,
    /// Reputation-driven growth: each clean sending day multiplies the IP's hourly capacity
    /// by this many percent (140 = ×1.4), up to `messages_max_per_hour`.
    pub growth_percent_per_clean_day: Option<u64>,
    pub messages_max_per_hour: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IspReplies {
    pub over_cap: Reply,
    pub max_messages: Reply,
    pub too_many_recipients: Reply,
    pub unknown_user: Reply,
    /// For recipients whose mailbox is full (local part `full…`).
    pub full_mailbox: Reply,
    /// For disabled accounts (local part `disabled…`).
    pub disabled: Reply,
    /// When one mailbox receives faster than `messages_per_mailbox_per_minute`.
    pub mailbox_rate: Reply,
}

impl Default for IspReplies {
    fn default() -> IspReplies {
        IspReplies {
            over_cap: Reply::new(
                421,
                Some([4, 7, 0]),
                "Too many concurrent SMTP connections from this IP address; please try again later.",
            ),
            max_messages: Reply::new(
                421,
                Some([4, 7, 0]),
                "Maximum number of messages per connection reached, closing connection.",
            ),
            too_many_recipients: Reply::new(
                452,
                Some([4, 5, 3]),
                "Your message has too many recipients.",
            ),
            unknown_user: Reply::new(
                550,
                Some([5, 1, 1]),
                "The email account that you tried to reach does not exist.",
            ),
            full_mailbox: Reply::new(452, Some([4, 2, 2]), "Mailbox full."),
            disabled: Reply::new(550, Some([5, 2, 1]), "This mailbox is disabled."),
            mailbox_rate: Reply::new(
                450,
                Some([4, 2, 1]),
                "The user you are trying to contact is receiving mail too quickly.",
            ),
        }
    }
}

impl IspSpec {
    /// The generic receiver: accepts everything, offers STARTTLS, rejects unknown users.
    pub fn generic(name: &str) -> IspSpec {
        IspSpec {
            name: name.to_string(),
            domains: Vec::new(),
            mx: Vec::new(),
            max_connections_per_ip: None,
            max_messages_per_connection: None,
            max_recipients_per_transaction: None,
            rate_limit: None,
            greylist: None,
            pause: None,
            reject_unknown_users: true,
            starttls: true,
            fixed_reply: None,
            throttle: None,
            replies: IspReplies::default(),
            close_silently_after_max_messages: false,
            messages_per_mailbox_per_minute: None,
            max_connections_per_ip_cold: None,
            require_tls: None,
            feedback: Feedback::default(),
            auth: None,
            reputation: None,
            history: History::default(),
            identities: Vec::new(),
            reply_wrap_chars: 0,
            reply_suffix: String::new(),
        }
    }
}

/// Finds a provider model by name (`isp-models/NAME.toml`) for [`Scenario::parse_with`].
pub type ModelLoader<'a> = &'a dyn Fn(&str) -> Result<IspSpec, ScenarioError>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Every MX of the ISP refuses connections.
    Outage { isp: String },
    /// One source IP cannot reach the ISP (connects are refused, open connections stall).
    Partition { isp: String, source_ip: IpAddr },
    /// The ISP answers `reply` at `phase`.
    ReplyOverride {
        isp: String,
        phase: SmtpPhase,
        reply: Reply,
    },
    /// One MX host is down.
    MxDown { mx: String },
    /// The store of shared throttles (`shared-throttles`) cannot be reached.
    StoreDown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub at_s: u64,
    pub for_s: u64,
}

/// Where the PowerMTA configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    Path(PathBuf),
    Inline(String),
}

/// Which driver runs a scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Under turmoil: real network code, a fixed tick (minutes to a day, faults).
    #[default]
    Network,
    /// In virtual time that jumps to the next event (days to months, sweeps).
    Fast,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "network" => Some(Mode::Network),
            "fast" => Some(Mode::Fast),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Network => "network",
            Mode::Fast => "fast",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    /// The driver that runs it (`mode`, or `--mode` on the command line).
    pub mode: Mode,
    pub seed: u64,
    pub duration_s: u64,
    pub start: Time,
    pub config: ConfigSource,
    pub latency_ms: (u64, u64),
    pub tick_ms: u64,
    pub isps: Vec<IspSpec>,
    pub workloads: Vec<Workload>,
    pub faults: Vec<Fault>,
    /// `[[expect]]`: checked when the run ends.
    pub expect: Vec<Expectation>,
    pub sender: SenderPosture,
    /// What loads but looks wrong (a stream that starts after the run ends, a domain no
    /// provider answers): printed before the run.
    pub warnings: Vec<ScenarioError>,
    /// `[engine] backoff_clock`: what `backoff-to-normal-after` counts from.
    pub backoff_clock: BackoffClock,
    /// `[engine] nodes`: engine nodes in the run (1 to [`NODES_MAX`]); the workload's
    /// messages are handed to them in turn.
    pub nodes: u16,
}

/// Most engine nodes one simulated run holds.
pub const NODES_MAX: u64 = 8;

struct Reporter<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Reporter<'_> {
    fn at(&self, offset: usize, message: impl Into<String>) -> ScenarioError {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ScenarioError {
            file: self.file.display().to_string(),
            line,
            column,
            message: message.into(),
            severity: Severity::Error,
        }
    }

    fn warn<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ScenarioError {
        ScenarioError {
            severity: Severity::Warning,
            ..self.span(spanned, message)
        }
    }

    fn span<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ScenarioError {
        self.at(spanned.span().start, message)
    }
}

fn interval(text: &str) -> Result<u64, String> {
    value::parse_interval(text)
        .map(|i| i.seconds)
        .map_err(|e| e.to_string())
}

fn reply(text: &str) -> Result<Reply, String> {
    crate::smtp::parse_reply_text(text).map_err(|e| {
        format!("`{text}` is not an SMTP reply such as \"421 4.7.0 try again later\" ({e})")
    })
}

/// `2026-09-21T12:00:00Z` → seconds since the Unix epoch (UTC only).
pub fn parse_utc(text: &str) -> Option<u64> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([year, month, day], [h, m, s]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    let (year, month, day) = (*year, *month, *day);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    // A leap second (`:60`) has no place in the accounting file's timestamps.
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=days_in_month).contains(&day)
        || *h > 23
        || *m > 59
        || *s > 59
    {
        return None;
    }
    // days_from_civil (Howard Hinnant), the inverse of `Time::acct_format`.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as u64 * 86_400 + h * 3600 + m * 60 + s)
}

/// A history from `history = "cold|warm|damaged"`, `reputation` and `clean_days`.
fn history_of<T>(
    r: &Reporter<'_>,
    spanned: &Spanned<T>,
    name: &Option<Spanned<String>>,
    reputation: Option<f64>,
    clean_days: Option<u32>,
) -> Result<History, ScenarioError> {
    let mut history = match name {
        Some(h) => History::named(h.get_ref()).ok_or_else(|| {
            r.span(
                h,
                format!("history is cold, warm or damaged, not `{}`", h.get_ref()),
            )
        })?,
        None => History::default(),
    };
    if let Some(score) = reputation {
        if !(0.0..=1.0).contains(&score) {
            return Err(r.span(
                spanned,
                format!("reputation is between 0 and 1, not {score}"),
            ));
        }
        history.score = Some(score);
    }
    if let Some(days) = clean_days {
        history.clean_days = days;
    }
    Ok(history)
}

/// One `[[identity]]`: the provider it is limited to (if any), the reputation ledger's key
/// and its history.
fn identity_of(
    r: &Reporter<'_>,
    spanned: &Spanned<RawIdentity>,
    isps: &[IspSpec],
) -> Result<(Option<String>, String, History), ScenarioError> {
    let id = spanned.get_ref();
    let key = match (&id.source_ip, &id.netblock, &id.domain) {
        (Some(ip), None, None) => {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| r.span(spanned, format!("source_ip `{ip}` is not an IP address")))?;
            format!("ip:{ip}")
        }
        (None, Some(net), None) => {
            // The providers keep one standing per IPv4 /24 (`a.b.c.0/24`).
            let parsed = net
                .strip_suffix("/24")
                .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
                .filter(|a| a.octets()[3] == 0);
            match parsed {
                Some(a) => format!("net:{a}/24"),
                None => {
                    return Err(r.span(
                        spanned,
                        format!("netblock `{net}` is not an IPv4 /24 such as `192.0.2.0/24`"),
                    ));
                }
            }
        }
        (None, None, Some(domain)) if value::is_host_name(domain) => {
            format!("domain:{}", domain.to_ascii_lowercase())
        }
        (None, None, Some(domain)) => {
            return Err(r.span(spanned, format!("domain `{domain}` is not a domain name")));
        }
        _ => {
            return Err(r.span(
                spanned,
                "an identity is one of source_ip, netblock or domain",
            ));
        }
    };
    let isp = match &id.isp {
        Some(name) => {
            let spec = isps.iter().find(|i| i.name == *name.get_ref());
            match spec {
                Some(spec) if spec.throttle.is_some() || spec.reputation.is_some() => {
                    Some(spec.name.clone())
                }
                Some(_) => {
                    return Err(r.span(
                        name,
                        format!("history needs a model with [throttle] or [reputation]; ISP `{}` has neither", name.get_ref()),
                    ));
                }
                None => {
                    let names: Vec<&str> = isps.iter().map(|i| i.name.as_str()).collect();
                    let hint =
                        crate::config::diag::did_you_mean(name.get_ref(), names.iter().copied())
                            .map_or(String::new(), |s| format!("; did you mean `{s}`?"));
                    return Err(r.span(
                        name,
                        format!("no ISP `{}` in this scenario{hint}", name.get_ref()),
                    ));
                }
            }
        }
        None => None,
    };
    let history = history_of(r, spanned, &id.history, id.reputation, id.clean_days)?;
    Ok((isp, key, history))
}

impl Scenario {
    /// Parses scenario `text` read from `file` (used for messages and for resolving the
    /// config path).
    pub fn parse(file: &Path, text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse_with(file, text, &|name| {
            Err(ScenarioError::in_file(
                file,
                format!("ISP model `{name}` needs the isp-models directory"),
            ))
        })
    }

    /// As [`Scenario::parse`], with `models` to load `[isps.X] model = "NAME"`.
    pub fn parse_with(
        file: &Path,
        text: &str,
        models: ModelLoader<'_>,
    ) -> Result<Scenario, ScenarioError> {
        let r = Reporter { file, text };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            r.at(offset, e.message().to_string())
        })?;
        let duration_s = interval(raw.duration.get_ref()).map_err(|e| r.span(&raw.duration, e))?;
        if duration_s == 0 || duration_s > DURATION_MAX_S {
            return Err(r.span(
                &raw.duration,
                format!(
                    "duration must be between 1s and {}d",
                    DURATION_MAX_S / 86_400
                ),
            ));
        }
        let mode = match &raw.mode {
            None => Mode::Network,
            Some(mode) => Mode::parse(mode.get_ref()).ok_or_else(|| {
                r.span(
                    mode,
                    format!(
                        "unknown mode `{}`; a run is `network` (the simulated network) or `fast` (virtual time)",
                        mode.get_ref()
                    ),
                )
            })?,
        };
        if !is_safe_name(raw.name.get_ref()) {
            return Err(r.span(
                &raw.name,
                format!(
                    "name `{}` names the run's directory: use letters, digits, `-`, `_` and `.` (not first), at most 100",
                    raw.name.get_ref()
                ),
            ));
        }
        let start = parse_utc(raw.start_time.get_ref())
            .map(Time::from_secs)
            .ok_or_else(|| {
                r.span(
                    &raw.start_time,
                    format!(
                        "start_time `{}` is not a UTC time between 1970 and 9999, such as 2026-09-21T12:00:00Z",
                        raw.start_time.get_ref()
                    ),
                )
            })?;
        if start.unix_secs() + duration_s + DRAIN_S > TIME_MAX_S {
            return Err(r.span(
                &raw.duration,
                "the run would end after the year 9999 (start_time + duration + the hour the simulator drains)",
            ));
        }
        let config = match (raw.config, raw.config_inline) {
            (Some(path), None) => {
                let base = file.parent().unwrap_or(Path::new(""));
                ConfigSource::Path(base.join(path.get_ref()))
            }
            (None, Some(text)) => ConfigSource::Inline(text),
            (Some(path), Some(_)) => {
                return Err(r.span(&path, "give `config` or `config_inline`, not both"));
            }
            (None, None) => {
                return Err(r.at(
                    0,
                    "missing `config` (a path relative to the scenario) or `config_inline`",
                ));
            }
        };
        let latency_ms = match &raw.latency_ms {
            Some(spanned) => {
                let [min, max] = *spanned.get_ref();
                if min > max || max > 60_000 {
                    return Err(
                        r.span(spanned, "latency_ms is [min, max] with min <= max <= 60000")
                    );
                }
                (min, max)
            }
            None => (1, 20),
        };
        let tick_ms = match &raw.tick_ms {
            Some(tick) if !(1..=1000).contains(tick.get_ref()) => {
                return Err(r.span(
                    tick,
                    format!(
                        "tick_ms is 1 to 1000 (the simulator's step), not {}",
                        tick.get_ref()
                    ),
                ));
            }
            Some(tick) => *tick.get_ref(),
            None => 1,
        };
        let mut warnings = Vec::new();
        if raw.isps.len() > ISPS_MAX {
            return Err(r.at(
                0,
                format!("{} ISPs, over the limit of {ISPS_MAX}", raw.isps.len()),
            ));
        }
        let mut isps: Vec<IspSpec> = Vec::new();
        for (name, spanned) in &raw.isps {
            let isp = spanned.get_ref();
            if !is_safe_name(name) {
                return Err(r.span(
                    spanned,
                    format!("ISP name `{name}` names chart files: use letters, digits, `-`, `_` and `.` (not first)"),
                ));
            }
            let mut base = match &isp.model {
                Some(model) => models(model.get_ref())?,
                None => IspSpec::generic(name),
            };
            base.name = name.clone();
            if isp.domains.is_empty() && base.domains.is_empty() {
                return Err(r.span(spanned, format!("ISP `{name}` answers no `domains`")));
            }
            let rate_limit = match &isp.rate_limit {
                Some(rl) => {
                    let per_ip = value::parse_rate(&rl.get_ref().per_ip)
                        .map_err(|e| r.span(rl, e.to_string()))?;
                    if matches!(per_ip, Rate::Limit { count: 0, .. }) {
                        return Err(r.span(
                            rl,
                            "a rate_limit of 0 accepts nothing; leave rate_limit out for no limit",
                        ));
                    }
                    Some(RateLimit {
                        per_ip,
                        reply: reply(&rl.get_ref().reply).map_err(|e| r.span(rl, e))?,
                    })
                }
                None => None,
            };
            let greylist = match &isp.greylist {
                Some(g) => {
                    // Only the delay is set inline; the rest is the model's (or postgrey's).
                    let mut grey = base.greylist.clone().unwrap_or(Greylist {
                        delay_s: 300,
                        retry_window_s: 2 * 86_400,
                        whitelist_after: 5,
                        whitelist_spacing_s: 3600,
                    });
                    grey.delay_s = interval(&g.get_ref().delay).map_err(|e| r.span(g, e))?;
                    if grey.delay_s == 0 {
                        return Err(r.span(
                            g,
                            "a greylist delay of 0s greylists nothing; leave greylist out",
                        ));
                    }
                    if grey.delay_s >= grey.retry_window_s {
                        return Err(r.span(
                            g,
                            "the greylist delay must be shorter than its retry window",
                        ));
                    }
                    Some(grey)
                }
                None => base.greylist.clone(),
            };
            let history = history_of(&r, spanned, &isp.history, isp.reputation, isp.clean_days)?;
            if (isp.history.is_some() || isp.reputation.is_some() || isp.clean_days.is_some())
                && base.throttle.is_none()
                && base.reputation.is_none()
            {
                return Err(r.span(spanned, format!("history, reputation and clean_days need a model with [throttle] or [reputation]; ISP `{name}` has neither")));
            }
            if isp.capacity_per_ip_per_hour == Some(0) {
                return Err(r.span(
                    spanned,
                    "`capacity_per_ip_per_hour` must be at least 1 (0 would let nothing through)",
                ));
            }
            if isp.capacity_per_ip_per_hour.is_some() && base.throttle.is_none() {
                return Err(r.span(spanned, format!("`capacity_per_ip_per_hour` needs a model with a [throttle]; ISP `{name}` has none")));
            }
            for (key, value) in [
                ("max_connections_per_ip", isp.max_connections_per_ip),
                (
                    "max_messages_per_connection",
                    isp.max_messages_per_connection,
                ),
                (
                    "max_recipients_per_transaction",
                    isp.max_recipients_per_transaction,
                ),
            ] {
                if value == Some(0) {
                    return Err(r.span(
                        spanned,
                        format!("`{key}` must be at least 1 (leave it out for no limit)"),
                    ));
                }
            }
            let fixed_reply = match &isp.fixed_reply {
                Some(f) => {
                    let phase = SmtpPhase::parse(&f.get_ref().phase).ok_or_else(|| {
                        r.span(
                            f,
                            "phase is one of greeting, ehlo, mail, rcpt, data, data_end",
                        )
                    })?;
                    Some((phase, reply(&f.get_ref().reply).map_err(|e| r.span(f, e))?))
                }
                None => None,
            };
            let domains: Vec<String> = if isp.domains.is_empty() {
                base.domains.clone()
            } else {
                isp.domains.iter().map(|d| d.to_ascii_lowercase()).collect()
            };
            let mx = if !isp.mx.is_empty() {
                isp.mx.clone()
            } else if !base.mx.is_empty() {
                base.mx.clone()
            } else {
                vec![format!("mx.{}", domains[0])]
            };
            if mx.len() > MX_PER_ISP_MAX {
                return Err(r.span(
                    spanned,
                    format!(
                        "ISP `{name}` has {} MX hosts, over the limit of {MX_PER_ISP_MAX}",
                        mx.len()
                    ),
                ));
            }
            // Each domain and MX host is a host name, and belongs to one provider.
            type Hosts = fn(&IspSpec) -> &[String];
            let names: [(&str, &[String], &str, Hosts); 2] = [
                ("domain", &domains, "answer", |i| &i.domains),
                ("MX", &mx, "list", |i| &i.mx),
            ];
            for (what, hosts, verb, of) in names {
                for host in hosts {
                    if !value::is_host_name(host) {
                        return Err(r.span(
                            spanned,
                            format!("ISP `{name}`: {what} `{host}` is not a host name"),
                        ));
                    }
                    if let Some(other) = isps.iter().find(|i| of(i).contains(host)) {
                        return Err(r.span(
                            spanned,
                            format!(
                                "ISP `{name}` and ISP `{}` both {verb} `{host}`: a {what} has one provider",
                                other.name
                            ),
                        ));
                    }
                }
            }
            // The scenario's own settings override the model's; the rest is the model's.
            isps.push(IspSpec {
                domains,
                mx,
                max_connections_per_ip: isp.max_connections_per_ip.or(base.max_connections_per_ip),
                max_messages_per_connection: isp
                    .max_messages_per_connection
                    .or(base.max_messages_per_connection),
                max_recipients_per_transaction: isp
                    .max_recipients_per_transaction
                    .or(base.max_recipients_per_transaction),
                rate_limit: rate_limit.or(base.rate_limit),
                greylist,
                reject_unknown_users: isp
                    .reject_unknown_users
                    .unwrap_or(base.reject_unknown_users),
                starttls: isp.starttls.unwrap_or(base.starttls),
                fixed_reply: fixed_reply.or(base.fixed_reply),
                throttle: base.throttle.map(|mut t| {
                    if let Some(capacity) = isp.capacity_per_ip_per_hour {
                        t.messages_per_ip_per_hour = capacity;
                        t.messages_per_netblock_per_hour =
                            t.messages_per_netblock_per_hour.map(|n| n.max(capacity));
                        t.messages_per_domain_per_hour =
                            t.messages_per_domain_per_hour.map(|n| n.max(capacity));
                    }
                    t
                }),
                feedback: Feedback {
                    enrolled: isp.feedback_loop.unwrap_or(true),
                    ..base.feedback
                },
                auth: base.auth.map(|mut a| {
                    if let Some(t) = isp.bulk_threshold_per_day {
                        a.bulk_threshold_per_day = t;
                    }
                    a
                }),
                history,
                ..base
            });
        }
        for spanned in &raw.identity {
            let (isp, key, history) = identity_of(&r, spanned, &isps)?;
            for spec in isps.iter_mut() {
                if isp.as_ref().is_none_or(|name| *name == spec.name) {
                    spec.identities.push((key.clone(), history.clone()));
                }
            }
        }
        let mut workloads = Vec::new();
        let mut total: u64 = 0;
        for (index, spanned) in raw.workload.iter().enumerate() {
            let w = spanned.get_ref();
            let workload =
                Workload::from_raw(index, w, &r, spanned, start.unix_secs(), duration_s)?;
            total = total.saturating_add(workload.messages);
            // A stream that sends nothing because of the scenario's own settings says so.
            let due = workload.due_by(duration_s);
            if workload.messages == 0 {
                warnings.push(r.warn(spanned, "this stream has `messages = 0`: it sends nothing"));
            } else if workload.start_s >= duration_s {
                warnings.push(r.warn(
                    spanned,
                    format!(
                        "this stream starts at {}s, when the run ({duration_s}s) is over: it sends nothing",
                        workload.start_s
                    ),
                ));
            } else if due < workload.messages {
                warnings.push(r.warn(
                    spanned,
                    format!(
                        "only {due} of this stream's {} messages are due before the run ends at {duration_s}s; the rest are never sent",
                        workload.messages
                    ),
                ));
            }
            for (domain, _) in &workload.domains {
                if !isps.iter().any(|i| i.domains.contains(domain)) {
                    warnings.push(r.warn(
                        spanned,
                        format!(
                            "no ISP of this scenario answers `{domain}`: its mail finds no mail host and bounces"
                        ),
                    ));
                }
            }
            workloads.push(workload);
        }
        if total > MESSAGES_MAX {
            return Err(r.at(
                0,
                format!("{total} messages in all, over the limit of {MESSAGES_MAX}"),
            ));
        }
        let sender = match &raw.sender {
            Some(spanned) => {
                let s = spanned.get_ref();
                let spf = match s.spf.as_deref().unwrap_or("pass") {
                    "pass" => SpfPosture::Pass,
                    "fail" => SpfPosture::Fail,
                    "none" => SpfPosture::None,
                    other => {
                        return Err(
                            r.span(spanned, format!("spf is pass, fail or none, not `{other}`"))
                        );
                    }
                };
                SenderPosture {
                    spf,
                    dmarc: s.dmarc.unwrap_or(true),
                    ptr: s.ptr.unwrap_or(true),
                    publish_dkim_keys: s.publish_dkim_keys.unwrap_or(true),
                    dns_txt: Vec::new(),
                }
            }
            None => SenderPosture {
                spf: SpfPosture::Pass,
                dmarc: true,
                ptr: true,
                publish_dkim_keys: true,
                dns_txt: Vec::new(),
            },
        };
        let sender = SenderPosture {
            dns_txt: raw
                .dns_txt
                .iter()
                .map(|t| (t.name.to_ascii_lowercase(), t.value.clone()))
                .collect(),
            ..sender
        };
        let mut faults = Vec::new();
        for spanned in &raw.fault {
            let f = spanned.get_ref();
            let at_s = interval(&f.at).map_err(|e| r.span(spanned, e))?;
            let for_s = interval(&f.for_).map_err(|e| r.span(spanned, e))?;
            let need = |field: &Option<String>, what: &str| {
                field
                    .clone()
                    .ok_or_else(|| r.span(spanned, format!("a `{}` fault needs `{what}`", f.kind)))
            };
            let known_isp = |name: String| {
                if raw.isps.contains_key(&name) {
                    Ok(name)
                } else {
                    Err(r.span(
                        spanned,
                        format!("fault names ISP `{name}`, which is not defined"),
                    ))
                }
            };
            let kind = match f.kind.as_str() {
                "outage" => FaultKind::Outage { isp: known_isp(need(&f.isp, "isp")?)? },
                "partition" => FaultKind::Partition {
                    isp: known_isp(need(&f.isp, "isp")?)?,
                    source_ip: need(&f.source_ip.as_ref().map(|ip| ip.get_ref().clone()), "source_ip")?.parse().map_err(|_| r.span(spanned, "source_ip is an IP address"))?,
                },
                "reply_override" => FaultKind::ReplyOverride {
                    isp: known_isp(need(&f.isp, "isp")?)?,
                    phase: SmtpPhase::parse(&need(&f.phase, "phase")?).ok_or_else(|| r.span(spanned, "phase is one of greeting, ehlo, mail, rcpt, data, data_end"))?,
                    reply: reply(&need(&f.reply, "reply")?).map_err(|e| r.span(spanned, e))?,
                },
                "mx_down" => FaultKind::MxDown { mx: need(&f.mx, "mx")? },
                "store_down" => FaultKind::StoreDown,
                other => return Err(r.span(spanned, format!("unknown fault kind `{other}`; kinds are outage, partition, reply_override, mx_down, store_down"))),
            };
            if for_s == 0 {
                return Err(r.span(spanned, "a fault lasts longer than 0s (`for`)"));
            }
            if at_s >= duration_s {
                return Err(r.span(
                    spanned,
                    format!("this fault starts at {at_s}s, when the run ({duration_s}s) is over"),
                ));
            }
            if let FaultKind::MxDown { mx } = &kind
                && !isps.iter().any(|i| i.mx.contains(mx))
            {
                let all: Vec<&str> = isps
                    .iter()
                    .flat_map(|i| i.mx.iter().map(String::as_str))
                    .collect();
                let hint = crate::config::diag::did_you_mean(mx, all.iter().copied())
                    .map_or_else(String::new, |m| format!("; did you mean `{m}`?"));
                return Err(r.span(
                    spanned,
                    format!("fault names MX `{mx}`, which no ISP of this scenario has{hint}"),
                ));
            }
            faults.push(Fault { kind, at_s, for_s });
        }
        // The domains an expectation may filter on: those the streams send to and the ISPs
        // answer.
        let mut known_domains: Vec<String> = workloads
            .iter()
            .flat_map(|w| w.domains.iter().map(|(d, _)| d.clone()))
            .chain(isps.iter().flat_map(|i| i.domains.iter().cloned()))
            .collect();
        known_domains.sort();
        known_domains.dedup();
        let backoff_clock = match raw
            .engine
            .as_ref()
            .and_then(|e| e.get_ref().backoff_clock.as_deref().map(|clock| (e, clock)))
        {
            None | Some((_, "entry")) => BackoffClock::Entry,
            Some((_, "last_match")) => BackoffClock::LastMatch,
            Some((e, other)) => {
                return Err(r.span(
                    e,
                    format!("backoff_clock is \"entry\" or \"last_match\", not `{other}`"),
                ));
            }
        };
        let nodes = match raw.engine.as_ref().and_then(|e| e.get_ref().nodes.as_ref()) {
            None => 1,
            Some(n) if (1..=NODES_MAX).contains(n.get_ref()) => *n.get_ref() as u16,
            Some(n) => {
                return Err(r.span(
                    n,
                    format!("nodes is between 1 and {NODES_MAX}, not {}", n.get_ref()),
                ));
            }
        };
        Ok(Scenario {
            nodes,
            backoff_clock,
            name: raw.name.into_inner(),
            mode,
            seed: raw.seed,
            duration_s,
            start,
            config,
            latency_ms,
            tick_ms,
            isps,
            workloads,
            faults,
            expect: expect::parse(
                &r,
                &raw.expect,
                &expect::Known {
                    isps: &raw.isps.keys().cloned().collect::<Vec<_>>(),
                    domains: &known_domains,
                    duration_s,
                },
            )?,
            sender,
            warnings,
        })
    }

    /// The ISP that answers `domain`, if any.
    pub fn isp_for(&self, domain: &str) -> Option<&IspSpec> {
        self.isps
            .iter()
            .find(|i| i.domains.iter().any(|d| d == domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
seed = 1
duration = "10m"
start_time = "2026-09-21T12:00:00Z"
config = "pmta.conf"
[isps.gmail]
domains = ["gmail.com"]
[[workload]]
vmta = "v"
mail_from = "a@example.com"
messages = 10
over = "1m"
domains = { "gmail.com" = 1.0 }
"#;

    #[test]
    fn a_minimal_scenario_parses() {
        let s = Scenario::parse(Path::new("scenarios/t.toml"), MINIMAL).unwrap();
        assert_eq!(s.duration_s, 600);
        assert_eq!(s.start, Time::from_secs(1_789_992_000));
        assert_eq!(
            s.config,
            ConfigSource::Path(PathBuf::from("scenarios/pmta.conf"))
        );
        assert_eq!(s.isps[0].mx, ["mx.gmail.com"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_line() {
        let bad = MINIMAL.replace("messages = 10", "messages = 10\nmesages = 3");
        let err = Scenario::parse(Path::new("s.toml"), &bad).unwrap_err();
        assert_eq!((err.line, err.column), (13, 1), "{err}");
        assert!(err.message.contains("unknown field `mesages`"), "{err}");
        let bad = MINIMAL.replace("duration = \"10m\"", "duration = \"10 minutes\"");
        let err = Scenario::parse(Path::new("s.toml"), &bad).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
    }

    #[test]
    fn utc_times_parse() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2026-09-21T12:00:00Z"), Some(1_789_992_000));
        assert_eq!(parse_utc("2026-09-21 12:00:00"), None);
    }

    #[test]
    fn inline_values_refine_a_model_without_losing_the_rest() {
        let model = || {
            let mut spec = IspSpec::generic("m");
            spec.domains = vec!["m.example".into()];
            spec.mx = vec!["mx.m.example".into()];
            spec.greylist = Some(Greylist {
                delay_s: 300,
                retry_window_s: 86_400,
                whitelist_after: 0,
                whitelist_spacing_s: 3600,
            });
            Ok(spec)
        };
        let text = MINIMAL.replace(
            "[isps.gmail]\ndomains = [\"gmail.com\"]",
            "[isps.gmail]\nmodel = \"m\"\ngreylist = { delay = \"1m\" }",
        );
        let s = Scenario::parse_with(Path::new("s.toml"), &text, &|_| model()).unwrap();
        let grey = s.isps[0].greylist.clone().unwrap();
        assert_eq!(
            (grey.delay_s, grey.retry_window_s, grey.whitelist_after),
            (60, 86_400, 0)
        );
        assert_eq!(s.isps[0].domains, ["m.example"]);
        let bad = text.replace(
            "greylist = { delay = \"1m\" }",
            "capacity_per_ip_per_hour = 10",
        );
        let err = Scenario::parse_with(Path::new("s.toml"), &bad, &|_| model()).unwrap_err();
        assert!(
            err.message.contains("needs a model with a [throttle]"),
            "{err}"
        );
    }
}
