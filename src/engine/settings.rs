//! Every directive the engine reads, in the form the scheduler uses: a queue's settings
//! (one typed field per `<domain>` directive it acts on), the global settings and a
//! `<source>` block's, each read once through one [`Reader`].
//!
//! Owns the translation from configuration values to plain numbers, and the one list of what
//! the engine reads: [`simulated`] runs these readers and returns the names they asked for,
//! so `check` can say truthfully which directives have no effect in simulation. Every read of
//! a directive by name in the engine goes through this file (`tests/tidy.rs` holds the rest of
//! the engine to it). It must not decide anything: what a limit means is the scheduler's.

use std::net::IpAddr;

use indexmap::IndexMap;

use crate::config::directives::BlockKind;
use crate::config::model::{Setting, Settings, Value};
use crate::config::queue::QueueView;
use crate::config::value::{Cidr, Rate};

/// A directive read, and the block it is read from (`None`: the top level).
pub type Read = (Option<BlockKind>, &'static str);

/// Directives the engine acts on through the configuration's structure rather than by
/// reading a value: `smtp-source-host` (a virtual MTA's source IPs and EHLO names),
/// `virtual-mta` (a pool's members), `domain-key` (the signer's keys, from the top level, a
/// virtual MTA or a `<domain>`), `queue-to` (`config::queue` follows it to name the queue)
/// and `domain-macro` (expanded in `<domain>` patterns).
pub const STRUCTURAL: &[Read] = &[
    (Some(BlockKind::VirtualMta), "smtp-source-host"),
    (Some(BlockKind::VirtualMtaPool), "virtual-mta"),
    (None, "domain-key"),
    (Some(BlockKind::VirtualMta), "domain-key"),
    (Some(BlockKind::Domain), "domain-key"),
    (Some(BlockKind::Domain), "queue-to"),
    (None, "domain-macro"),
];

/// Every directive the engine acts on, where it reads it: what its readers ask for, plus
/// [`STRUCTURAL`]. Sorted.
pub fn simulated() -> Vec<Read> {
    let mut reads = Vec::new();
    let view = QueueView {
        domain: String::new(),
        vmta: String::new(),
        queue_domain: String::new(),
        settings: IndexMap::new(),
    };
    QueueSettings::read(&view, Some(&mut reads));
    GlobalSettings::read(&Settings::default(), Some(&mut reads));
    SourceSettings::read(&Settings::default(), Some(&mut reads));
    AcctFileSettings::read(&Settings::default(), Some(&mut reads));
    VirtualMtaSettings::read(&Settings::default(), Some(&mut reads));
    reads.extend_from_slice(STRUCTURAL);
    reads.sort();
    reads.dedup();
    reads
}

/// Reads directive values by name from one scope, noting each name it is asked for.
struct Reader<'a, 't> {
    block: Option<BlockKind>,
    get: &'a dyn Fn(&str) -> Option<&'a Value>,
    trace: Option<&'t mut Vec<Read>>,
}

impl<'a, 't> Reader<'a, 't> {
    /// A reader over one block's (or the top level's) directives.
    fn of(
        block: Option<BlockKind>,
        get: &'a dyn Fn(&str) -> Option<&'a Value>,
        trace: Option<&'t mut Vec<Read>>,
    ) -> Reader<'a, 't> {
        Reader { block, get, trace }
    }

    fn value(&mut self, name: &'static str) -> Option<&'a Value> {
        if let Some(trace) = self.trace.as_mut() {
            trace.push((self.block, name));
        }
        (self.get)(name)
    }

    fn count(&mut self, name: &'static str) -> Option<u64> {
        match self.value(name) {
            Some(Value::Count(n)) => Some(*n),
            _ => None,
        }
    }

    fn flag(&mut self, name: &'static str) -> bool {
        matches!(self.value(name), Some(Value::Bool(true)))
    }

    fn seconds(&mut self, name: &'static str) -> Option<u64> {
        match self.value(name) {
            Some(Value::Interval(i)) => Some(i.seconds),
            _ => None,
        }
    }

    fn seconds_list(&mut self, name: &'static str) -> Vec<u64> {
        match self.value(name) {
            Some(Value::IntervalList(list)) if !list.is_empty() => {
                list.iter().map(|i| i.seconds).collect()
            }
            _ => vec![600],
        }
    }

    fn rate(&mut self, name: &'static str) -> Rate {
        match self.value(name) {
            Some(Value::Rate(rate)) => *rate,
            _ => Rate::Unlimited,
        }
    }

    /// Every line of a repeatable text directive, in order.
    fn texts(&mut self, name: &'static str, all: &'a [Setting]) -> Vec<&'a str> {
        self.value(name);
        all.iter()
            .filter_map(|s| match &s.value {
                Value::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    /// A daily list (`1/day,2/day,...`) as messages per day, the last value repeating.
    fn per_day_list(&mut self, name: &'static str) -> Vec<u64> {
        match self.value(name) {
            Some(Value::RateList(list)) => list
                .iter()
                .map(|rate| match rate {
                    Rate::Unlimited => u64::MAX,
                    Rate::Limit { count, per_seconds } => {
                        (*count as u128 * 86_400 / (*per_seconds).max(1) as u128) as u64
                    }
                })
                .collect(),
            Some(Value::Rate(Rate::Limit { count, per_seconds })) => {
                vec![(*count as u128 * 86_400 / (*per_seconds).max(1) as u128) as u64]
            }
            _ => Vec::new(),
        }
    }

    fn text(&mut self, name: &'static str) -> Option<String> {
        match self.value(name) {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        }
    }

    /// Per-source-IP values (`source-ip-max-smtp-out 192.0.2.0/24 5`), most specific first.
    fn per_source_ip<T>(
        &mut self,
        name: &'static str,
        pick: impl Fn(&Value) -> Option<T>,
    ) -> PerSourceIp<T> {
        let mut entries = Vec::new();
        if let Some(Value::PerSourceIpList(list)) = self.value(name) {
            for item in list {
                if let Value::PerSourceIp { cidr, value } = item
                    && let Some(v) = pick(value)
                {
                    entries.push((*cidr, v));
                }
            }
        }
        entries.sort_by_key(|(cidr, _)| std::cmp::Reverse(prefix_len(cidr)));
        PerSourceIp { entries }
    }
}

/// How a queue delivers (`type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryType {
    Smtp,
    /// `type discard`: every recipient is delivered at once, nothing is sent.
    Discard,
    /// `type pipe`, `file` or `http-delivery`: handed to a local program, file or web
    /// endpoint; in simulation, delivered at once like `discard` but recorded as its type.
    Local(&'static str),
}

impl DeliveryType {
    pub fn name(self) -> &'static str {
        match self {
            DeliveryType::Smtp => "smtp",
            DeliveryType::Discard => "discard",
            DeliveryType::Local(name) => name,
        }
    }
}

/// Per-source-IP values (`source-ip-max-smtp-out 192.0.2.0/24 5`), most specific network
/// first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerSourceIp<T> {
    entries: Vec<(Cidr, T)>,
}

impl<T: Copy> PerSourceIp<T> {
    /// The value for `ip` from the most specific network that contains it.
    pub fn get(&self, ip: IpAddr) -> Option<T> {
        self.entries
            .iter()
            .find(|(cidr, _)| cidr.contains(ip))
            .map(|(_, v)| *v)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PerSourceIp<Rate> {
    /// The longest window any of these rates uses, in milliseconds.
    pub fn max_window_ms(&self) -> u64 {
        self.entries
            .iter()
            .map(|(_, r)| match r {
                Rate::Unlimited => 0,
                Rate::Limit { per_seconds, .. } => per_seconds * 1000,
            })
            .max()
            .unwrap_or(0)
    }
}

fn prefix_len(cidr: &Cidr) -> u8 {
    match cidr {
        Cidr::Any => 0,
        Cidr::Net { prefix_len, .. } => *prefix_len,
    }
}

/// `dkim-sign`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkimSign {
    No,
    Yes,
    IfXDkimOptionsPresent,
}

/// What `bounce-upon-no-mx` says to do when a domain has no mail host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoMxPolicy {
    /// Keep retrying (`false`, `never`).
    Retry,
    /// Bounce at once (`true`).
    Bounce,
    /// Bounce once the domain has had no MX for this long.
    BounceAfter { seconds: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    pub max_smtp_out: u64,
    pub backoff_max_smtp_out: u64,
    /// 0: no limit.
    pub max_msg_per_connection: u64,
    pub max_rcpt_per_transaction: u64,
    pub max_msg_rate: Rate,
    pub backoff_max_msg_rate: Rate,
    pub max_connect_rate: Rate,
    pub backoff_max_connect_rate: Rate,
    pub source_ip_max_smtp_out: PerSourceIp<u64>,
    pub source_ip_max_msg_rate: PerSourceIp<Rate>,
    pub source_ip_max_connect_rate: PerSourceIp<Rate>,
    pub retry_upon_new_mail: bool,
    pub assume_delivery_upon_data_termination_timeout: bool,
    pub bounce_upon_transfer_failure: bool,
    /// Record types not written for this queue (`disable-acct-records d,t`).
    pub disable_acct_records: Vec<String>,
    pub smtp_out_rampup_interval_s: u64,
    pub connection_idle_timeout_s: u64,
    /// `None`: unlimited.
    pub max_errors_per_connection: Option<u64>,
    pub retry_after_s: Vec<u64>,
    pub backoff_retry_after_s: Vec<u64>,
    pub retry_recipients_after_s: u64,
    pub retry_after_dns_error_s: u64,
    pub bounce_after_s: u64,
    /// `None`: never.
    pub backoff_to_normal_after_s: Option<u64>,
    pub backoff_to_normal_after_delivery: bool,
    /// `reroute-to-virtual-mta`: every message of the queue goes to this virtual MTA or pool.
    pub reroute_to_virtual_mta: Option<String>,
    /// `backoff-reroute-to-virtual-mta`: while in backoff, to this virtual MTA or pool.
    pub backoff_reroute_to_virtual_mta: Option<String>,
    /// `max-cold-virtual-mta-msg`: messages per day to the virtual MTA's cold twin, day by
    /// day from its first use (the last value repeats); empty: none.
    pub max_cold_virtual_mta_msg_per_day: Vec<u64>,
    /// `None`: never.
    pub reenable_source_ip_after_s: Option<u64>,
    pub backoff_upon_all_sources_disabled: bool,
    pub connect_timeout_s: u64,
    pub smtp_greeting_timeout_s: u64,
    pub data_send_timeout_s: u64,
    pub smtp_data_termination_timeout_s: u64,
    pub smtp_421_means_mx_unavailable: bool,
    pub smtp_553_means_invalid_mailbox: bool,
    pub bounce_upon_no_mx: NoMxPolicy,
    pub bounce_upon_5xx_greeting: bool,
    pub delivery_type: DeliveryType,
    pub queue_priority: u64,
    pub use_starttls: bool,
    pub require_starttls: bool,
    pub smtp_hosts: Option<String>,
    pub smtp_pattern_list: Option<String>,
    pub dkim_sign: DkimSign,
    pub dkim_algorithm: String,
    pub dkim_body_canon: String,
    pub dkim_headers_canon: String,
    pub dkim_headers: Option<String>,
    /// `dkim-identity` when it names an identity (`@example.com`, `news@example.com`);
    /// `None` for `sender-or-from`.
    pub dkim_identity: Option<String>,
}

impl QueueSettings {
    pub fn from_view(view: &QueueView) -> QueueSettings {
        QueueSettings::read(view, None)
    }

    /// Reads a queue's settings, noting every directive asked for in `trace`.
    pub fn read(view: &QueueView, trace: Option<&mut Vec<Read>>) -> QueueSettings {
        let get = |name: &str| view.settings.get(name).and_then(|e| e.value.as_ref());
        let mut r = Reader::of(Some(BlockKind::Domain), &get, trace);
        let bounce_upon_no_mx = match r.value("bounce-upon-no-mx") {
            Some(Value::Bool(true)) => NoMxPolicy::Bounce,
            Some(Value::Interval(i)) => NoMxPolicy::BounceAfter { seconds: i.seconds },
            _ => NoMxPolicy::Retry,
        };
        let dkim_sign = match r.text("dkim-sign").as_deref() {
            Some("yes" | "true") => DkimSign::Yes,
            Some("if-x-dkim-options-present") => DkimSign::IfXDkimOptionsPresent,
            _ => DkimSign::No,
        };
        QueueSettings {
            max_smtp_out: r.count("max-smtp-out").unwrap_or(20),
            backoff_max_smtp_out: r.count("backoff-max-smtp-out").unwrap_or(20),
            max_msg_per_connection: r.count("max-msg-per-connection").unwrap_or(0),
            max_rcpt_per_transaction: r.count("max-rcpt-per-transaction").unwrap_or(1000).max(1),
            max_msg_rate: r.rate("max-msg-rate"),
            backoff_max_msg_rate: r.rate("backoff-max-msg-rate"),
            max_connect_rate: r.rate("max-connect-rate"),
            backoff_max_connect_rate: r.rate("backoff-max-connect-rate"),
            source_ip_max_smtp_out: r.per_source_ip("source-ip-max-smtp-out", |v| match v {
                Value::Count(n) => Some(*n),
                _ => None,
            }),
            source_ip_max_msg_rate: r.per_source_ip("source-ip-max-msg-rate", |v| match v {
                Value::Rate(r) => Some(*r),
                _ => None,
            }),
            source_ip_max_connect_rate: r.per_source_ip(
                "source-ip-max-connect-rate",
                |v| match v {
                    Value::Rate(r) => Some(*r),
                    _ => None,
                },
            ),
            retry_upon_new_mail: r.flag("retry-upon-new-mail"),
            assume_delivery_upon_data_termination_timeout: r
                .flag("assume-delivery-upon-data-termination-timeout"),
            bounce_upon_transfer_failure: r.flag("bounce-upon-transfer-failure"),
            disable_acct_records: r
                .text("disable-acct-records")
                .map(|t| {
                    t.split([',', ' '])
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            smtp_out_rampup_interval_s: r.seconds("smtp-out-rampup-interval").unwrap_or(0),
            connection_idle_timeout_s: r.seconds("connection-idle-timeout").unwrap_or(0),
            max_errors_per_connection: r.count("max-errors-per-connection"),
            retry_after_s: r.seconds_list("retry-after"),
            backoff_retry_after_s: r.seconds_list("backoff-retry-after"),
            retry_recipients_after_s: r.seconds("retry-recipients-after").unwrap_or(600),
            retry_after_dns_error_s: r.seconds("retry-after-dns-error").unwrap_or(60),
            bounce_after_s: r.seconds("bounce-after").unwrap_or(BOUNCE_AFTER_DEFAULT_S),
            backoff_to_normal_after_s: r.seconds("backoff-to-normal-after"),
            backoff_to_normal_after_delivery: r.flag("backoff-to-normal-after-delivery"),
            reroute_to_virtual_mta: r.text("reroute-to-virtual-mta"),
            backoff_reroute_to_virtual_mta: r.text("backoff-reroute-to-virtual-mta"),
            max_cold_virtual_mta_msg_per_day: r.per_day_list("max-cold-virtual-mta-msg"),
            reenable_source_ip_after_s: r.seconds("reenable-source-ip-after"),
            backoff_upon_all_sources_disabled: r.flag("backoff-upon-all-sources-disabled"),
            connect_timeout_s: r.seconds("connect-timeout").unwrap_or(120),
            smtp_greeting_timeout_s: r.seconds("smtp-greeting-timeout").unwrap_or(300),
            data_send_timeout_s: r.seconds("data-send-timeout").unwrap_or(180),
            smtp_data_termination_timeout_s: r
                .seconds("smtp-data-termination-timeout")
                .unwrap_or(600),
            smtp_421_means_mx_unavailable: r.flag("smtp-421-means-mx-unavailable"),
            smtp_553_means_invalid_mailbox: r.flag("smtp-553-means-invalid-mailbox"),
            bounce_upon_no_mx,
            bounce_upon_5xx_greeting: r.flag("bounce-upon-5xx-greeting"),
            delivery_type: match r.text("type").as_deref() {
                Some("discard") => DeliveryType::Discard,
                Some("pipe") => DeliveryType::Local("pipe"),
                Some("file") => DeliveryType::Local("file"),
                Some("http-delivery") => DeliveryType::Local("http-delivery"),
                _ => DeliveryType::Smtp,
            },
            queue_priority: r.count("queue-priority").unwrap_or(50),
            use_starttls: r.flag("use-starttls"),
            require_starttls: r.flag("require-starttls"),
            smtp_hosts: r.text("smtp-hosts"),
            smtp_pattern_list: r.text("smtp-pattern-list"),
            dkim_sign,
            dkim_algorithm: r
                .text("dkim-algorithm")
                .unwrap_or_else(|| "rsa-sha256".into()),
            dkim_body_canon: r
                .text("dkim-body-canon")
                .unwrap_or_else(|| "relaxed".into()),
            dkim_headers_canon: r
                .text("dkim-headers-canon")
                .unwrap_or_else(|| "relaxed".into()),
            dkim_headers: r.text("dkim-headers"),
            dkim_identity: r.text("dkim-identity").filter(|t| t.contains('@')),
        }
    }
}

/// The top-level directives the engine reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobalSettings {
    /// `None`: unlimited.
    pub total_max_smtp_out: Option<u64>,
    /// The EHLO name of a source IP without one of its own.
    pub host_name: Option<String>,
    pub default_virtual_mta: Option<String>,
    /// `shared-throttles`: the store keeping limits shared by several nodes (canonical
    /// `redis://HOST:PORT/DB`); `None` keeps every limit local.
    pub shared_throttles: Option<String>,
    /// `shared-throttles-nodes`: how many nodes share them (each node's share of a limit
    /// while the store is unreachable is the limit divided by this, at least 1).
    pub shared_throttles_nodes: u64,
    /// `shared-throttles-node`: this node's name in the store (live mode; a default is
    /// made from the host name and process when unset).
    pub shared_throttles_node: Option<String>,
}

impl GlobalSettings {
    pub fn read(globals: &Settings, trace: Option<&mut Vec<Read>>) -> GlobalSettings {
        let get = |name: &str| globals.get(name).map(|s| &s.value);
        let mut r = Reader::of(None, &get, trace);
        GlobalSettings {
            total_max_smtp_out: r.count("total-max-smtp-out"),
            host_name: r.text("host-name"),
            default_virtual_mta: r.text("default-virtual-mta"),
            shared_throttles: r.text("shared-throttles"),
            shared_throttles_nodes: r.count("shared-throttles-nodes").unwrap_or(1).max(1),
            shared_throttles_node: r.text("shared-throttles-node"),
        }
    }
}

/// What a `<source>` block says about routing the mail it injects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceSettings {
    /// Honour the message's `X-Virtual-MTA` header.
    pub process_x_virtual_mta: bool,
    /// A `<pattern-list>` choosing the virtual MTA by envelope.
    pub pattern_list: Option<String>,
    pub default_virtual_mta: Option<String>,
}

impl SourceSettings {
    pub fn read(settings: &Settings, trace: Option<&mut Vec<Read>>) -> SourceSettings {
        let get = |name: &str| settings.get(name).map(|s| &s.value);
        let mut r = Reader::of(Some(BlockKind::Source), &get, trace);
        SourceSettings {
            process_x_virtual_mta: r.flag("process-x-virtual-mta"),
            pattern_list: r.text("pattern-list"),
            default_virtual_mta: r.text("default-virtual-mta"),
        }
    }
}

/// PowerMTA's `bounce-after` when none is given: 4d12h.
pub const BOUNCE_AFTER_DEFAULT_S: u64 = 388_800;

/// The longest `bounce-after` any queue of `config` can have (written anywhere, or the
/// default): no recipient stays queued longer, which bounds what a run holds at once.
pub fn longest_bounce_after_s(config: &crate::config::Config) -> u64 {
    let vmtas = config
        .virtual_mtas
        .values()
        .flat_map(|v| std::iter::once(&v.settings).chain(v.domains.iter().map(|d| &d.settings)));
    std::iter::once(&config.globals)
        .chain(vmtas)
        .chain(config.domains.iter().map(|d| &d.settings))
        .filter_map(
            |settings| match settings.get("bounce-after").map(|s| &s.value) {
                Some(Value::Interval(i)) => Some(i.seconds),
                _ => None,
            },
        )
        .fold(BOUNCE_AFTER_DEFAULT_S, u64::max)
}

/// What an `<acct-file>` block says the accounting file holds: its record types (`records`,
/// PowerMTA's default `d,b`) and, per type, its fields (`record-fields`; the default set
/// otherwise), as record type codes and field names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcctFileSettings {
    pub records: Vec<&'static str>,
    /// (type code, fields as written; `*` stands for the default set).
    pub record_fields: Vec<(&'static str, Vec<String>)>,
}

impl AcctFileSettings {
    pub fn read(settings: &Settings, trace: Option<&mut Vec<Read>>) -> AcctFileSettings {
        let get = |name: &str| settings.get(name).map(|s| &s.value);
        let mut r = Reader::of(Some(BlockKind::AcctFile), &get, trace);
        // The values were checked when the configuration was read.
        let records = r
            .text("records")
            .and_then(|t| crate::config::value::parse_acct_records(&t).ok())
            .unwrap_or_else(|| vec!["d", "b"]);
        let record_fields = r
            .texts("record-fields", settings.get_all("record-fields"))
            .into_iter()
            .filter_map(|t| crate::config::value::parse_acct_fields(t).ok())
            .collect();
        AcctFileSettings {
            records,
            record_fields,
        }
    }
}

/// What the engine reads from a `<virtual-mta>` block beyond its source hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtualMtaSettings {
    /// `cold-virtual-mta NAME`: the warmup twin that takes the first
    /// `max-cold-virtual-mta-msg` messages per domain per day.
    pub cold_virtual_mta: Option<String>,
}

impl VirtualMtaSettings {
    pub fn read(settings: &Settings, trace: Option<&mut Vec<Read>>) -> VirtualMtaSettings {
        let get = |name: &str| settings.get(name).map(|s| &s.value);
        let mut r = Reader::of(Some(BlockKind::VirtualMta), &get, trace);
        VirtualMtaSettings {
            cold_virtual_mta: r.text("cold-virtual-mta"),
        }
    }
}
