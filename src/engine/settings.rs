//! A queue's settings in the form the scheduler uses: one typed field per directive the
//! engine acts on, read once from the configuration's effective settings for the queue.
//!
//! Owns the translation from [`QueueView`] (values with provenance) to plain numbers. It
//! must not decide anything: what a limit means is the scheduler's business.

use std::net::IpAddr;

use crate::config::model::Value;
use crate::config::queue::QueueView;
use crate::config::value::{Cidr, Rate};

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

fn per_source_ip<T>(
    view: &QueueView,
    name: &str,
    pick: impl Fn(&Value) -> Option<T>,
) -> PerSourceIp<T> {
    let mut entries = Vec::new();
    if let Some(Value::PerSourceIpList(list)) =
        view.settings.get(name).and_then(|e| e.value.as_ref())
    {
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

fn count(view: &QueueView, name: &str) -> Option<u64> {
    match view.settings.get(name).and_then(|e| e.value.as_ref()) {
        Some(Value::Count(n)) => Some(*n),
        _ => None,
    }
}

fn flag(view: &QueueView, name: &str) -> bool {
    matches!(
        view.settings.get(name).and_then(|e| e.value.as_ref()),
        Some(Value::Bool(true))
    )
}

fn seconds(view: &QueueView, name: &str) -> Option<u64> {
    match view.settings.get(name).and_then(|e| e.value.as_ref()) {
        Some(Value::Interval(i)) => Some(i.seconds),
        _ => None,
    }
}

fn seconds_list(view: &QueueView, name: &str) -> Vec<u64> {
    match view.settings.get(name).and_then(|e| e.value.as_ref()) {
        Some(Value::IntervalList(list)) if !list.is_empty() => {
            list.iter().map(|i| i.seconds).collect()
        }
        _ => vec![600],
    }
}

fn rate(view: &QueueView, name: &str) -> Rate {
    match view.settings.get(name).and_then(|e| e.value.as_ref()) {
        Some(Value::Rate(rate)) => *rate,
        _ => Rate::Unlimited,
    }
}

fn text(view: &QueueView, name: &str) -> Option<String> {
    match view.settings.get(name).and_then(|e| e.value.as_ref()) {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    }
}

impl QueueSettings {
    pub fn from_view(view: &QueueView) -> QueueSettings {
        let bounce_upon_no_mx = match view
            .settings
            .get("bounce-upon-no-mx")
            .and_then(|e| e.value.as_ref())
        {
            Some(Value::Bool(true)) => NoMxPolicy::Bounce,
            Some(Value::Interval(i)) => NoMxPolicy::BounceAfter { seconds: i.seconds },
            _ => NoMxPolicy::Retry,
        };
        let dkim_sign = match text(view, "dkim-sign").as_deref() {
            Some("yes" | "true") => DkimSign::Yes,
            Some("if-x-dkim-options-present") => DkimSign::IfXDkimOptionsPresent,
            _ => DkimSign::No,
        };
        QueueSettings {
            max_smtp_out: count(view, "max-smtp-out").unwrap_or(20),
            backoff_max_smtp_out: count(view, "backoff-max-smtp-out").unwrap_or(20),
            max_msg_per_connection: count(view, "max-msg-per-connection").unwrap_or(0),
            max_rcpt_per_transaction: count(view, "max-rcpt-per-transaction")
                .unwrap_or(1000)
                .max(1),
            max_msg_rate: rate(view, "max-msg-rate"),
            backoff_max_msg_rate: rate(view, "backoff-max-msg-rate"),
            max_connect_rate: rate(view, "max-connect-rate"),
            backoff_max_connect_rate: rate(view, "backoff-max-connect-rate"),
            source_ip_max_smtp_out: per_source_ip(view, "source-ip-max-smtp-out", |v| match v {
                Value::Count(n) => Some(*n),
                _ => None,
            }),
            source_ip_max_msg_rate: per_source_ip(view, "source-ip-max-msg-rate", |v| match v {
                Value::Rate(r) => Some(*r),
                _ => None,
            }),
            source_ip_max_connect_rate: per_source_ip(view, "source-ip-max-connect-rate", |v| {
                match v {
                    Value::Rate(r) => Some(*r),
                    _ => None,
                }
            }),
            retry_upon_new_mail: flag(view, "retry-upon-new-mail"),
            assume_delivery_upon_data_termination_timeout: flag(
                view,
                "assume-delivery-upon-data-termination-timeout",
            ),
            bounce_upon_transfer_failure: flag(view, "bounce-upon-transfer-failure"),
            disable_acct_records: text(view, "disable-acct-records")
                .map(|t| {
                    t.split([',', ' '])
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            smtp_out_rampup_interval_s: seconds(view, "smtp-out-rampup-interval").unwrap_or(0),
            connection_idle_timeout_s: seconds(view, "connection-idle-timeout").unwrap_or(0),
            max_errors_per_connection: count(view, "max-errors-per-connection"),
            retry_after_s: seconds_list(view, "retry-after"),
            backoff_retry_after_s: seconds_list(view, "backoff-retry-after"),
            retry_recipients_after_s: seconds(view, "retry-recipients-after").unwrap_or(600),
            retry_after_dns_error_s: seconds(view, "retry-after-dns-error").unwrap_or(60),
            bounce_after_s: seconds(view, "bounce-after").unwrap_or(388_800),
            backoff_to_normal_after_s: seconds(view, "backoff-to-normal-after"),
            backoff_to_normal_after_delivery: flag(view, "backoff-to-normal-after-delivery"),
            reenable_source_ip_after_s: seconds(view, "reenable-source-ip-after"),
            backoff_upon_all_sources_disabled: flag(view, "backoff-upon-all-sources-disabled"),
            connect_timeout_s: seconds(view, "connect-timeout").unwrap_or(120),
            smtp_greeting_timeout_s: seconds(view, "smtp-greeting-timeout").unwrap_or(300),
            data_send_timeout_s: seconds(view, "data-send-timeout").unwrap_or(180),
            smtp_data_termination_timeout_s: seconds(view, "smtp-data-termination-timeout")
                .unwrap_or(600),
            smtp_421_means_mx_unavailable: flag(view, "smtp-421-means-mx-unavailable"),
            smtp_553_means_invalid_mailbox: flag(view, "smtp-553-means-invalid-mailbox"),
            bounce_upon_no_mx,
            bounce_upon_5xx_greeting: flag(view, "bounce-upon-5xx-greeting"),
            delivery_type: match text(view, "type").as_deref() {
                Some("discard") => DeliveryType::Discard,
                Some("pipe") => DeliveryType::Local("pipe"),
                Some("file") => DeliveryType::Local("file"),
                Some("http-delivery") => DeliveryType::Local("http-delivery"),
                _ => DeliveryType::Smtp,
            },
            queue_priority: count(view, "queue-priority").unwrap_or(50),
            use_starttls: flag(view, "use-starttls"),
            require_starttls: flag(view, "require-starttls"),
            smtp_hosts: text(view, "smtp-hosts"),
            smtp_pattern_list: text(view, "smtp-pattern-list"),
            dkim_sign,
            dkim_algorithm: text(view, "dkim-algorithm").unwrap_or_else(|| "rsa-sha256".into()),
            dkim_body_canon: text(view, "dkim-body-canon").unwrap_or_else(|| "relaxed".into()),
            dkim_headers_canon: text(view, "dkim-headers-canon")
                .unwrap_or_else(|| "relaxed".into()),
            dkim_headers: text(view, "dkim-headers"),
            dkim_identity: text(view, "dkim-identity").filter(|t| t.contains('@')),
        }
    }
}
