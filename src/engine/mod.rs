//! The delivery engine: a sans-io core that obeys a PowerMTA configuration.
//!
//! Owns every delivery decision: which virtual MTA and source IP send a message, which queue
//! (`DOMAIN/VMTA`) it waits in, when a connection opens, what is written on it, how each
//! reply is classified, when to retry, when a queue enters and leaves backoff mode, and
//! which accounting record results. It does no I/O and reads no clock: drivers (the network
//! simulator, the fast simulator, live sockets) feed it events with the current time and
//! carry out the actions it asks for. See [`Engine`] for the call order.

pub mod accounting;
pub mod classify;
pub mod control;
pub mod session;
pub mod settings;
pub mod shared;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use indexmap::IndexMap;
use thiserror::Error;

use self::accounting::{AcctRecord, RecordType, ReplyPhase};
use self::classify::{Classifier, Disposition};
use self::session::{
    Awaiting, ClientSession, FailureReason, Phase, SessionEvent, SessionOptions, Transaction,
};
use self::settings::{
    DeliveryType, DkimSign, GlobalSettings, NoMxPolicy, QueueSettings, SourceSettings,
    VirtualMtaSettings,
};
use self::shared::{PermitAnswer, PermitRequest, QueuePermits, SharedNode, SharedState};
use crate::auth::{SignOptions, Signer};
use crate::config::model::{Config, PatternAction, QueueMode};
use crate::config::queue;
use crate::config::source::Span;
use crate::config::value::{Cidr, Rate};
use crate::rate::Window;
use crate::smtp::{self, Reply};
pub use crate::time::Time;

/// Limits on what one engine holds. Past them, injection is refused rather than memory
/// growing without bound.
pub const MESSAGES_MAX: usize = 10_000_000;
pub const RECIPIENTS_PER_MESSAGE_MAX: usize = 10_000;
pub const MESSAGE_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;
pub const CONNECTIONS_MAX: usize = 100_000;
pub const QUEUES_MAX: usize = 1_000_000;
/// Most MX targets (host, address) kept per queue.
pub const MX_TARGETS_MAX: usize = 64;
/// The longest window a per-source-IP rate may use (PowerMTA's largest unit is a day).
const DAY_MS: u64 = 86_400_000;
/// How long a queue's backoff mode is shared with the other nodes when
/// `backoff-to-normal-after` does not say (`shared-throttles`).
const SHARED_BACKOFF_DEFAULT_S: u64 = 3_600;
/// Most `reroute-to-virtual-mta` hops one recipient follows (PowerMTA detects loops).
const REROUTE_HOPS_MAX: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct QueueId(u32);

/// A message's bytes as injected (line ends LF or CRLF): a part of its own — the whole
/// message, or its header block — and a part it may share with other messages (a stream's
/// body), so a million queued copies of one newsletter hold its body once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageData {
    own: Box<[u8]>,
    shared: Arc<SharedBody>,
}

/// A body many messages share, with its wire form (CRLF, dot-stuffed, terminated) made the
/// first time one of them is sent rather than once per attempt: stuffing is a byte-by-byte
/// pass and, per attempt, was a tenth of a fast-mode run.
#[derive(Debug, Default)]
pub struct SharedBody {
    bytes: Box<[u8]>,
    wire: OnceLock<Box<[u8]>>,
    /// Its DKIM body hash (`bh=`) under simple and relaxed canonicalization, each made the
    /// first time a message of the body is signed that way: canonicalizing and hashing the
    /// body per message was most of signing's cost besides the signature itself.
    body_hashes: [OnceLock<Box<[u8]>>; 2],
}

impl SharedBody {
    pub fn new(bytes: Vec<u8>) -> SharedBody {
        SharedBody {
            bytes: bytes.into_boxed_slice(),
            wire: OnceLock::new(),
            body_hashes: Default::default(),
        }
    }

    /// The body's DKIM body hash under `canon` (see [`crate::auth::body_hash`]).
    fn body_hash(&self, canon: crate::auth::Canonicalization) -> &[u8] {
        let slot = match canon {
            crate::auth::Canonicalization::Simple => 0,
            crate::auth::Canonicalization::Relaxed => 1,
        };
        self.body_hashes[slot].get_or_init(|| {
            crate::auth::body_hash(&crate::auth::to_crlf(&self.bytes), canon).into_boxed_slice()
        })
    }

    /// The body as sent after DATA when it starts a line: see [`smtp::Stuffer`].
    fn wire(&self) -> &[u8] {
        self.wire
            .get_or_init(|| smtp::dot_stuff(&self.bytes).into_boxed_slice())
    }
}

impl PartialEq for SharedBody {
    fn eq(&self, other: &SharedBody) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SharedBody {}

impl MessageData {
    /// `head` (the header block, ending in its blank line) followed by a shared `body`.
    pub fn with_shared_body(head: Vec<u8>, body: Arc<SharedBody>) -> MessageData {
        MessageData {
            own: head.into_boxed_slice(),
            shared: body,
        }
    }

    pub fn len(&self) -> usize {
        self.own.len() + self.shared.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part that holds the headers.
    pub fn head(&self) -> &[u8] {
        &self.own
    }

    /// The whole message in one buffer (for signing: made per attempt, then dropped).
    pub fn to_vec(&self) -> Vec<u8> {
        [&self.own[..], &self.shared.bytes[..]].concat()
    }

    /// The message as sent after DATA (see [`smtp::dot_stuff`]), after `prefix` (a
    /// DKIM-Signature header, say): the message's own part stuffed, then the shared body's
    /// wire form copied when the own part ends a line, as it does for a header block.
    fn dot_stuffed(&self, prefix: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(prefix.len() + self.len() + self.len() / 64 + 5);
        let mut stuffer = smtp::Stuffer::default();
        stuffer.push(&mut out, prefix);
        stuffer.push(&mut out, &self.own);
        if self.shared.bytes.is_empty() {
            stuffer.finish(&mut out);
        } else if stuffer.at_line_start() {
            out.extend_from_slice(self.shared.wire());
        } else {
            stuffer.push(&mut out, &self.shared.bytes);
            stuffer.finish(&mut out);
        }
        out
    }

    fn is_eight_bit(&self) -> bool {
        smtp::is_eight_bit(&self.own) || smtp::is_eight_bit(&self.shared.bytes)
    }
}

impl From<Vec<u8>> for MessageData {
    fn from(bytes: Vec<u8>) -> MessageData {
        MessageData {
            own: bytes.into_boxed_slice(),
            shared: Arc::default(),
        }
    }
}

/// A message handed to the engine.
#[derive(Clone, Debug)]
pub struct Injection {
    pub mail_from: String,
    pub recipients: Vec<String>,
    /// The message, headers and body, as injected (line ends LF or CRLF).
    pub data: MessageData,
    /// The virtual MTA or pool the injecting stream names, if any.
    pub virtual_mta: Option<String>,
    /// The injecting client's address (`<source>` rules apply); `None` for the API.
    pub source_ip: Option<IpAddr>,
    pub job_id: String,
    pub env_id: String,
    /// When the message was first queued, for a message recovered from the spool after a
    /// restart: its `timeQueued` and its `bounce-after` count from then. `None` is `now`;
    /// a time after `now` is read as `now`.
    pub queued_at: Option<Time>,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("a message needs at least one recipient")]
    NoRecipients,
    #[error("{0} recipients in one message, over the limit of {RECIPIENTS_PER_MESSAGE_MAX}")]
    TooManyRecipients(usize),
    #[error("message of {0} bytes, over the limit of {MESSAGE_SIZE_MAX_BYTES}")]
    TooLarge(usize),
    #[error("`{0}` is not a deliverable address")]
    BadAddress(String),
    #[error("no virtual MTA: name one, or set `default-virtual-mta`")]
    NoVirtualMta,
    #[error("virtual MTA or pool `{0}` is not defined")]
    UnknownVirtualMta(String),
    #[error("the engine holds {MESSAGES_MAX} messages already")]
    Full,
    #[error("{0}")]
    Queue(String),
}

impl InjectError {
    /// The reason as one word, for counting refusals.
    pub fn kind(&self) -> &'static str {
        match self {
            InjectError::NoRecipients => "no-recipients",
            InjectError::TooManyRecipients(_) => "too-many-recipients",
            InjectError::TooLarge(_) => "too-large",
            InjectError::BadAddress(_) => "bad-address",
            InjectError::NoVirtualMta => "no-virtual-mta",
            InjectError::UnknownVirtualMta(_) => "unknown-virtual-mta",
            InjectError::Full => "engine-full",
            InjectError::Queue(_) => "queue",
        }
    }
}

/// What a driver must do for the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Look up the mail hosts of `domain` and answer with [`Engine::handle_mx`].
    ResolveMx {
        domain: String,
    },
    /// Open a TCP connection from `source_ip` to `ip:port`; answer with
    /// [`Engine::handle_connected`] or [`Engine::handle_connect_failed`].
    Connect {
        conn: ConnectionId,
        queue: String,
        source_ip: IpAddr,
        host: String,
        ip: IpAddr,
        port: u16,
    },
    Write {
        conn: ConnectionId,
        bytes: Vec<u8>,
    },
    /// Upgrade the connection to TLS for `server_name`, then call
    /// [`Engine::handle_tls_established`].
    StartTls {
        conn: ConnectionId,
        server_name: String,
    },
    Close {
        conn: ConnectionId,
    },
    /// Hand back the data of `message` with [`Engine::handle_message_data`]: asked only by
    /// an engine whose driver keeps the bodies ([`Bodies::Driver`]), when a transaction
    /// needs them.
    LoadMessage {
        message: MessageId,
    },
    /// Ask the shared store (`shared-throttles`) for `queue`'s permits; answer with
    /// [`Engine::handle_permits`] unless the request needs no answer.
    Permits {
        queue: String,
        request: PermitRequest,
    },
}

/// One mail host of a domain, with its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    pub preference: u16,
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
}

/// A DNS answer for [`Action::ResolveMx`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxAnswer {
    Hosts(Vec<MxHost>),
    /// The domain has no mail host (no MX and no address).
    NoMailHost,
    /// The lookup failed for now.
    TempFail(String),
}

/// How a recipient was settled for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    Delivered,
    Bounced,
}

/// Things that happened to queues and connections, for reports and checkers: the facts
/// drivers and the report read, so none of them sniffs bytes or parses reason strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// Recipient `recipient` (its index in the [`Injection`]'s list) of `message` is
    /// delivered or bounced: the engine forgets it (a live driver journals it, so a restart
    /// does not send it again). Written whether or not its accounting record is.
    RecipientSettled {
        at: Time,
        message: MessageId,
        recipient: u32,
        outcome: Settled,
    },
    /// The engine asked for a connection for `queue` from `source_ip` ([`Action::Connect`]).
    ConnectionOpened {
        at: Time,
        conn: ConnectionId,
        queue: String,
        domain: String,
        vmta: String,
        source_ip: IpAddr,
    },
    /// A transaction began on `conn`: its MAIL FROM and `recipients` RCPT commands are sent
    /// from now (the time the queue's rate limits count them).
    TransactionStarted {
        at: Time,
        conn: ConnectionId,
        recipients: u64,
    },
    /// The engine is done with `conn` (closed, failed or lost), after `messages`
    /// transactions.
    ConnectionClosed {
        at: Time,
        conn: ConnectionId,
        messages: u64,
    },
    /// The queue switched to `mode`, and what switched it.
    ModeChanged {
        at: Time,
        queue: String,
        domain: String,
        vmta: String,
        mode: QueueMode,
        trigger: ModeTrigger,
    },
    SourceIpDisabled {
        at: Time,
        queue: String,
        domain: String,
        vmta: String,
        ip: IpAddr,
        until: Option<Time>,
    },
    RetryScheduled {
        at: Time,
        queue: String,
        domain: String,
        vmta: String,
        until: Time,
    },
    /// Recipients of an injected message entered a queue at `at` (their `timeQueued`,
    /// unless the message was recovered with its original [`Injection::queued_at`]).
    Queued {
        at: Time,
        queue: String,
        domain: String,
        vmta: String,
        recipients: u64,
    },
    /// What holds the queue's waiting mail back changed: the scheduler met `limit` (waiting
    /// until `until` when the wait has an end), or nothing holds it ([`HeldBy::Sending`]).
    /// Emitted only when the limit changes, so its volume follows the queue's changes of
    /// state, not its messages.
    QueueHeld {
        at: Time,
        queue: String,
        domain: String,
        vmta: String,
        limit: HeldBy,
        until: Option<Time>,
    },
    /// The node's throttles became shared through the store again, or fell back to its
    /// share of each limit (the limit divided by `nodes`) because the store is unreachable.
    SharedThrottles {
        at: Time,
        state: SharedState,
        nodes: u64,
    },
    /// A configured pattern could not be evaluated (the regex engine's backtracking limit):
    /// reported the first time each pattern fails, so no failure passes as "no match".
    PatternFailed {
        at: Time,
        /// Where it was used: `queue DOMAIN/VMTA` or `routing`.
        context: String,
        /// `FILE:LINE` of the pattern.
        position: String,
        pattern: String,
        /// What it was matched against.
        subject: String,
        error: String,
    },
}

/// What switched a queue's mode ([`EngineEvent::ModeChanged`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModeTrigger {
    /// A reply matched a pattern of the queue's `<smtp-pattern-list>` whose action sets the
    /// mode: the pattern as written, and the reply on one line.
    Pattern { pattern: String, reply: String },
    /// `backoff-to-normal-after` elapsed.
    BackoffToNormalAfter,
    /// A delivery while in backoff, with `backoff-to-normal-after-delivery yes`.
    DeliveryInBackoff,
    /// Every source IP of the queue was disabled, with `backoff-upon-all-sources-disabled`.
    AllSourceIpsDisabled,
    /// An operator set the mode (`pmta-sim ctl set queue --mode=...`).
    Operator,
    /// Another node put the queue into backoff (`shared-throttles`).
    SharedStore,
}

impl std::fmt::Display for ModeTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModeTrigger::Pattern { pattern, reply } => write!(f, "/{pattern}/ matched `{reply}`"),
            ModeTrigger::BackoffToNormalAfter => f.write_str("backoff-to-normal-after elapsed"),
            ModeTrigger::DeliveryInBackoff => f.write_str("delivery while in backoff"),
            ModeTrigger::AllSourceIpsDisabled => f.write_str("all source IPs disabled"),
            ModeTrigger::Operator => f.write_str("set by the operator"),
            ModeTrigger::SharedStore => f.write_str("set by another node"),
        }
    }
}

/// What the scheduler found holding a queue's waiting mail back, in the order it checks:
/// the queue's own limits in its mode, the engine's, then its source IPs'. A limit of the
/// mode the queue is in carries that mode (`MaxMsgRate` in normal mode, `BackoffMaxMsgRate`
/// in backoff).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HeldBy {
    /// Nothing: connections carry the queue's mail (or are opening for it), or it is empty.
    Sending,
    /// Waiting for the mail hosts of the queue's domain.
    MxLookup,
    /// Retry mode: no new connection before the retry interval ends (`retry-after`), or
    /// every MX host failed recently.
    RetryAfter,
    BackoffRetryAfter,
    /// The message-rate window is full.
    MaxMsgRate,
    BackoffMaxMsgRate,
    /// Every allowed connection is open and busy.
    MaxSmtpOut,
    BackoffMaxSmtpOut,
    MaxConnectRate,
    BackoffMaxConnectRate,
    /// `smtp-out-rampup-interval` since the last connection has not passed.
    Rampup,
    /// `total-max-smtp-out`: the whole MTA's connections.
    TotalMaxSmtpOut,
    /// The engine's own connection limit ([`CONNECTIONS_MAX`]).
    EngineConnections,
    /// Every source IP of the queue is disabled (`disable-source-ip`).
    SourceIpsDisabled,
    /// Every enabled source IP is at a `source-ip-max-*` limit.
    SourceIpMaxSmtpOut,
    SourceIpMaxConnectRate,
    SourceIpMaxMsgRate,
    /// Only recipients waiting out `retry-recipients-after` after a deferral are left.
    RetryRecipientsAfter,
    /// An operator paused the queue or its domain ([`control::Control::Pause`]).
    Paused,
}

impl HeldBy {
    /// The directive (or the state) by name: `max-msg-rate`, `sending`, ...
    pub fn name(self) -> &'static str {
        match self {
            HeldBy::Sending => "sending",
            HeldBy::MxLookup => "mx-lookup",
            HeldBy::RetryAfter => "retry-after",
            HeldBy::BackoffRetryAfter => "backoff-retry-after",
            HeldBy::MaxMsgRate => "max-msg-rate",
            HeldBy::BackoffMaxMsgRate => "backoff-max-msg-rate",
            HeldBy::MaxSmtpOut => "max-smtp-out",
            HeldBy::BackoffMaxSmtpOut => "backoff-max-smtp-out",
            HeldBy::MaxConnectRate => "max-connect-rate",
            HeldBy::BackoffMaxConnectRate => "backoff-max-connect-rate",
            HeldBy::Rampup => "smtp-out-rampup-interval",
            HeldBy::TotalMaxSmtpOut => "total-max-smtp-out",
            HeldBy::EngineConnections => "engine connection limit",
            HeldBy::SourceIpsDisabled => "disable-source-ip",
            HeldBy::SourceIpMaxSmtpOut => "source-ip-max-smtp-out",
            HeldBy::SourceIpMaxConnectRate => "source-ip-max-connect-rate",
            HeldBy::SourceIpMaxMsgRate => "source-ip-max-msg-rate",
            HeldBy::RetryRecipientsAfter => "retry-recipients-after",
            HeldBy::Paused => "paused",
        }
    }

    /// A limit of backoff mode, or retry mode: what holds a queue whatever its provider
    /// does meanwhile.
    pub fn is_backoff_or_retry(self) -> bool {
        matches!(
            self,
            HeldBy::RetryAfter
                | HeldBy::BackoffRetryAfter
                | HeldBy::BackoffMaxMsgRate
                | HeldBy::BackoffMaxSmtpOut
                | HeldBy::BackoffMaxConnectRate
        )
    }

    /// `normal` in normal mode, `backoff` in backoff mode.
    fn in_mode(mode: QueueMode, normal: HeldBy, backoff: HeldBy) -> HeldBy {
        match mode {
            QueueMode::Normal => normal,
            QueueMode::Backoff => backoff,
        }
    }
}

/// A queue's state, for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub name: String,
    /// The queue's domain (after `queue-to`) and virtual MTA.
    pub domain: String,
    pub vmta: String,
    pub mode: QueueMode,
    pub recipients_queued: usize,
    pub connections: usize,
    pub retry_until: Option<Time>,
    pub settings: QueueSettings,
}

/// A queued message. Only the message as injected is kept; the bytes sent (dot-stuffed, and
/// signed when the queue signs) are made for each attempt, so a queued message costs its own
/// bytes once, not once per form.
/// Strings are boxed (`Box<str>`: no spare capacity, 16 bytes inline): live mode keeps a
/// million of these.
struct Message {
    mail_from: Box<str>,
    recipients: Box<[Box<str>]>,
    /// `None` while the driver keeps the body ([`Bodies::Driver`]): it is loaded for each
    /// transaction and dropped again once the bytes to send are made.
    data: Option<MessageData>,
    size: u64,
    eight_bit: bool,
    queued_at: Time,
    job_id: Box<str>,
    env_id: Box<str>,
    src_type: &'static str,
    /// The injecting client (`srcMta`), formatted only into records.
    src_mta: Option<IpAddr>,
    /// Recipients not yet delivered or bounced.
    open: usize,
    from_domain: Box<str>,
    has_x_dkim_options: bool,
    /// The DKIM-Signature header made for each queue that signs (signing is per queue: its
    /// settings choose the canonicalization and headers), kept so every retry sends the
    /// signature of the first attempt.
    signed: Vec<(QueueId, Box<str>)>,
    /// Where each recipient is: entries in a queue's lists may hold recipients that have
    /// since been settled (expired while waiting); they are dropped when taken.
    rcpt_state: Box<[RcptState]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RcptState {
    /// In its queue: ready, or waiting out `retry-recipients-after`.
    Waiting,
    /// In a transaction on a connection.
    Sending,
    /// Delivered or bounced.
    Done,
}

/// Recipients of one message waiting in one queue.
#[derive(Clone, Debug)]
struct Entry {
    msg: MessageId,
    rcpts: Vec<u32>,
}

#[derive(Clone, Debug)]
struct Target {
    host: String,
    ip: IpAddr,
    port: u16,
}

#[derive(Clone, Debug)]
enum MxState {
    Unknown,
    Pending,
    Known(Vec<Target>),
    NoMailHost { since: Time },
}

struct Queue {
    name: String,
    domain: String,
    vmta: String,
    pool: String,
    settings: QueueSettings,
    ready: VecDeque<Entry>,
    /// Recipients waiting out `retry-recipients-after`, by when they may go again.
    waiting: BTreeMap<(Time, u64), Entry>,
    queued_rcpts: usize,
    mode: QueueMode,
    backoff_leave_at: Option<Time>,
    retry_until: Option<Time>,
    retry_index: usize,
    connections: BTreeSet<ConnectionId>,
    /// Connections not yet through EHLO.
    opening: usize,
    idle: Vec<ConnectionId>,
    rcpt_window: Window,
    connect_window: Window,
    last_connect: Option<Time>,
    disabled_ips: BTreeMap<IpAddr, Option<Time>>,
    next_source: usize,
    mx_lookup: String,
    mx: MxState,
    wake_at: Option<Time>,
    /// What held the queue back when it was last scheduled ([`EngineEvent::QueueHeld`]).
    held: HeldBy,
    /// State for the `source-ip-*` limits, per source IP.
    per_ip: BTreeMap<IpAddr, PerIp>,
    /// Since when lookups have found no mail host, for `bounce-upon-no-mx INTERVAL`.
    no_mx_since: Option<Time>,
    /// How long the per-source-IP windows must remember (0 when no such rate is set).
    per_ip_horizon_ms: u64,
    /// When each message's recipients in this queue expire (`bounce-after`), and which.
    expiries: BTreeMap<(Time, MessageId), Vec<u32>>,
    /// MX hosts a connection failed to, skipped by new connections until the time given.
    mx_down: BTreeMap<IpAddr, Time>,
    /// What `max-smtp-out` and `max-msg-rate` are divided by: 1, or the node count while a
    /// node with `shared-throttles` keeps its share.
    share: u64,
    /// Permits from the shared store (`shared-throttles`).
    permits: QueuePermits,
}

struct PerIp {
    connections: u64,
    rcpt_window: Window,
    connect_window: Window,
}

impl PerIp {
    fn new(horizon_ms: u64) -> PerIp {
        PerIp {
            connections: 0,
            rcpt_window: Window::new(horizon_ms),
            connect_window: Window::new(horizon_ms),
        }
    }
}

impl Queue {
    fn max_smtp_out(&self) -> u64 {
        let max = match self.mode {
            QueueMode::Normal => self.settings.max_smtp_out,
            QueueMode::Backoff => self.settings.backoff_max_smtp_out,
        };
        if self.share > 1 {
            shared::share_count(max, self.share)
        } else {
            max
        }
    }

    /// The limit every node together keeps (`max-smtp-out` in the queue's mode).
    fn full_max_smtp_out(&self) -> u64 {
        match self.mode {
            QueueMode::Normal => self.settings.max_smtp_out,
            QueueMode::Backoff => self.settings.backoff_max_smtp_out,
        }
    }

    fn msg_rate(&self) -> Rate {
        let rate = self.full_msg_rate();
        if self.share > 1 {
            shared::share_rate(rate, self.share)
        } else {
            rate
        }
    }

    /// The rate every node together keeps (`max-msg-rate` in the queue's mode).
    fn full_msg_rate(&self) -> Rate {
        match self.mode {
            QueueMode::Normal => self.settings.max_msg_rate,
            QueueMode::Backoff => self.settings.backoff_max_msg_rate,
        }
    }

    fn connect_rate(&self) -> Rate {
        match self.mode {
            QueueMode::Normal => self.settings.max_connect_rate,
            QueueMode::Backoff => self.settings.backoff_max_connect_rate,
        }
    }

    fn retry_list(&self) -> &[u64] {
        match self.mode {
            QueueMode::Normal => &self.settings.retry_after_s,
            QueueMode::Backoff => &self.settings.backoff_retry_after_s,
        }
    }

    /// The retry interval the queue is at: positional in the mode's list, the last repeats.
    fn retry_interval_s(&self) -> u64 {
        let list = self.retry_list();
        list[self.retry_index.min(list.len() - 1)]
    }
}

fn rate_horizon_ms(rates: &[Rate]) -> u64 {
    rates
        .iter()
        .map(|r| match r {
            Rate::Unlimited => 0,
            Rate::Limit { per_seconds, .. } => per_seconds * 1000,
        })
        .max()
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Open,
    Quitting,
}

struct Connection {
    queue: QueueId,
    source_ip: IpAddr,
    target: usize,
    targets: Vec<Target>,
    state: ConnState,
    session: ClientSession,
    in_flight: Option<Entry>,
    /// The transaction in flight waits for its message's data ([`Action::LoadMessage`]).
    loading: bool,
    transactions: u64,
    errors: u64,
    deadline: Option<Time>,
    ready: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Queue(QueueId),
    Connection(ConnectionId),
}

/// Options that are not in the PowerMTA configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineOptions {
    /// Seeds the stand-in DKIM keys (simulation).
    pub seed: u64,
    /// What `backoff-to-normal-after` counts from (PowerMTA's guide does not say).
    pub backoff_clock: BackoffClock,
    /// Who keeps the message bodies while they wait.
    pub bodies: Bodies,
    /// Which node of a simulated run with several this engine is: its connection and
    /// message ids start at `node << 40`, so they are unique across the run's nodes.
    pub node: u16,
}

/// Who keeps a queued message's body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bodies {
    /// The engine, in memory (simulation: the workload's bodies share their bytes).
    #[default]
    Engine,
    /// The driver (live mode: the spool has them on disk). The engine reads the headers at
    /// injection, drops the body, and asks for it with [`Action::LoadMessage`] when a
    /// transaction needs it, so a million queued messages do not hold their bodies in
    /// memory.
    Driver,
}

/// Where `backoff-to-normal-after` counts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackoffClock {
    /// The reply that switched the queue into backoff; a match while already in backoff
    /// switches nothing and leaves the clock alone.
    #[default]
    Entry,
    /// Every matching reply, so a queue that keeps meeting them stays in backoff.
    LastMatch,
}

/// The delivery engine.
///
/// Call order: create it with [`Engine::new`]; then, whenever something happens, call the
/// matching input — [`inject`](Engine::inject), [`handle_mx`](Engine::handle_mx),
/// [`handle_connected`](Engine::handle_connected),
/// [`handle_connect_failed`](Engine::handle_connect_failed),
/// [`handle_bytes`](Engine::handle_bytes),
/// [`handle_tls_established`](Engine::handle_tls_established),
/// [`handle_closed`](Engine::handle_closed), or [`handle_timeout`](Engine::handle_timeout)
/// once the time from [`poll_timeout`](Engine::poll_timeout) has come — each with the
/// current `now`, which never goes backwards. After each input, drain
/// [`poll_action`](Engine::poll_action) (and carry the actions out in order),
/// [`poll_record`](Engine::poll_record) and [`poll_event`](Engine::poll_event), then sleep
/// until [`poll_timeout`](Engine::poll_timeout) or the next input.
pub struct Engine {
    config: Config,
    signer: Signer,
    classifier: Classifier,
    /// Boxed: a B-tree's nodes are about half full when ids only grow, and a `Message` is
    /// some 300 bytes, so inline values would cost as much again in empty slots per queued
    /// message (live mode keeps a million queued).
    messages: BTreeMap<MessageId, Box<Message>>,
    next_message: u64,
    queues: Vec<Queue>,
    /// Each queue's id by its name (`domain/virtual-mta`, or a `queue-to` target's).
    queue_ids: IndexMap<String, QueueId>,
    routes: IndexMap<(String, String), QueueId>,
    pool_next: IndexMap<String, usize>,
    /// `cold-virtual-mta` use per (domain, virtual MTA): the day of first use, the current
    /// day and the messages sent to the cold twin on it.
    cold_use: BTreeMap<(String, String), (u64, u64, u64)>,
    connections: BTreeMap<ConnectionId, Connection>,
    next_connection: u64,
    total_connections: usize,
    timers: BTreeSet<(Time, u64, TimerKind)>,
    timer_seq: u64,
    dirty: BTreeSet<QueueId>,
    actions: VecDeque<Action>,
    records: VecDeque<AcctRecord>,
    events: VecDeque<EngineEvent>,
    /// The top-level directives the engine reads.
    globals: GlobalSettings,
    backoff_clock: BackoffClock,
    bodies: Bodies,
    /// Connections waiting for a message's data, by message.
    loading: BTreeMap<MessageId, Vec<ConnectionId>>,
    /// [`Engine::handle_stop`] was called: no new connection or transaction.
    stopping: bool,
    mx_requested: BTreeSet<String>,
    decisions: u64,
    last_now: Time,
    /// Patterns already reported as failing (each is reported once).
    failed_patterns: BTreeSet<(classify::RuleOrigin, Span)>,
    /// Queue names and domains an operator paused ([`control::Control::Pause`]).
    paused: BTreeSet<String>,
    /// `shared-throttles`: the node's side of limits shared with other nodes.
    shared: Option<SharedNode>,
}

impl Engine {
    pub fn new(config: Config, options: EngineOptions) -> Result<Engine, crate::auth::DkimError> {
        let signer = Signer::from_config(&config, options.seed)?;
        let classifier = Classifier::new(&config);
        let globals = GlobalSettings::read(&config.globals, None);
        let shared = globals.shared_throttles.as_ref().map(|_| SharedNode {
            nodes: globals.shared_throttles_nodes,
            state: SharedState::Shared,
            changed_at: None,
        });
        let first_id = (u64::from(options.node) << 40) + 1;
        Ok(Engine {
            config,
            signer,
            classifier,
            messages: BTreeMap::new(),
            next_message: first_id,
            queues: Vec::new(),
            queue_ids: IndexMap::new(),
            routes: IndexMap::new(),
            pool_next: IndexMap::new(),
            cold_use: BTreeMap::new(),
            connections: BTreeMap::new(),
            next_connection: first_id,
            total_connections: 0,
            timers: BTreeSet::new(),
            timer_seq: 0,
            dirty: BTreeSet::new(),
            actions: VecDeque::new(),
            records: VecDeque::new(),
            events: VecDeque::new(),
            globals,
            backoff_clock: options.backoff_clock,
            bodies: options.bodies,
            loading: BTreeMap::new(),
            stopping: false,
            mx_requested: BTreeSet::new(),
            decisions: 0,
            last_now: Time::default(),
            failed_patterns: BTreeSet::new(),
            paused: BTreeSet::new(),
            shared,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Who keeps the message bodies.
    pub fn bodies(&self) -> Bodies {
        self.bodies
    }

    // --- outputs -----------------------------------------------------------------------------

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_record(&mut self) -> Option<AcctRecord> {
        self.records.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    /// When the engine next needs [`handle_timeout`](Engine::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.first().map(|(t, _, _)| *t)
    }

    /// Scheduling decisions taken so far (for benchmarks).
    pub fn decisions(&self) -> u64 {
        self.decisions
    }

    /// Recipients not yet delivered or bounced.
    pub fn recipients_pending(&self) -> usize {
        self.messages.values().map(|m| m.open).sum()
    }

    /// Connections open or being opened.
    pub fn connections_open(&self) -> usize {
        self.connections.len()
    }

    pub fn queue_snapshots(&self) -> Vec<QueueSnapshot> {
        self.queues
            .iter()
            .map(|q| QueueSnapshot {
                name: q.name.clone(),
                domain: q.domain.clone(),
                vmta: q.vmta.clone(),
                mode: q.mode,
                recipients_queued: q.queued_rcpts,
                connections: q.connections.len(),
                retry_until: q.retry_until,
                settings: q.settings.clone(),
            })
            .collect()
    }

    // --- inputs ------------------------------------------------------------------------------

    /// Accepts a message: routes it to a virtual MTA and queues each recipient.
    pub fn inject(&mut self, now: Time, injection: Injection) -> Result<MessageId, InjectError> {
        self.advance(now);
        if injection.recipients.is_empty() {
            return Err(InjectError::NoRecipients);
        }
        if injection.recipients.len() > RECIPIENTS_PER_MESSAGE_MAX {
            return Err(InjectError::TooManyRecipients(injection.recipients.len()));
        }
        if injection.data.len() > MESSAGE_SIZE_MAX_BYTES {
            return Err(InjectError::TooLarge(injection.data.len()));
        }
        if self.messages.len() >= MESSAGES_MAX {
            return Err(InjectError::Full);
        }
        for address in std::iter::once(&injection.mail_from).chain(&injection.recipients) {
            let ok = address.is_empty() && std::ptr::eq(address, &injection.mail_from)
                || crate::config::value::parse_address(address).is_ok();
            if !ok || address.len() > 256 {
                return Err(InjectError::BadAddress(address.clone()));
            }
        }
        let (x_virtual_mta, has_x_dkim_options, from_domain) = {
            let parsed = mail_parser::MessageParser::default().parse_headers(injection.data.head());
            let header = |name: &str| {
                parsed
                    .as_ref()
                    .and_then(|m| m.header_raw(name))
                    .map(|v| v.trim().to_string())
            };
            // The signing domain follows PowerMTA's default `dkim-identity sender-or-from`:
            // the Sender: header's domain when there is one, else the From: header's.
            let from_domain = parsed
                .as_ref()
                .and_then(|m| m.sender().or_else(|| m.from()))
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()));
            (
                header("X-Virtual-MTA"),
                header("X-DKIM-Options").is_some(),
                from_domain,
            )
        };
        let from_domain = from_domain.unwrap_or_else(|| {
            injection
                .mail_from
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default()
        });
        let mut failures = Vec::new();
        let routed = self.route(&injection, x_virtual_mta, &mut failures);
        self.report_failures(
            now,
            None,
            || format!("the envelope of message {}", injection.env_id),
            failures,
        );
        let (vmta, pool) = routed?;
        let id = MessageId(self.next_message);
        self.next_message += 1;
        let mut per_queue: IndexMap<QueueId, Vec<u32>> = IndexMap::new();
        for (index, rcpt) in injection.recipients.iter().enumerate() {
            let domain = rcpt
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            let queue = self.queue_routed(now, &domain, &vmta, &pool)?;
            per_queue.entry(queue).or_default().push(index as u32);
        }
        let count = injection.recipients.len();
        let size = injection.data.len() as u64;
        let eight_bit = injection.data.is_eight_bit();
        let data = match self.bodies {
            Bodies::Engine => Some(injection.data),
            Bodies::Driver => None,
        };
        let queued_at = injection.queued_at.map_or(now, |t| t.min(now));
        let message = Message {
            mail_from: injection.mail_from.into_boxed_str(),
            size,
            eight_bit,
            open: injection.recipients.len(),
            recipients: injection
                .recipients
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            has_x_dkim_options,
            data,
            queued_at,
            job_id: injection.job_id.into_boxed_str(),
            env_id: injection.env_id.into_boxed_str(),
            src_type: if injection.source_ip.is_some() {
                "smtp"
            } else {
                "api"
            },
            src_mta: injection.source_ip,
            from_domain: from_domain.into_boxed_str(),
            signed: Vec::new(),
            rcpt_state: vec![RcptState::Waiting; count].into_boxed_slice(),
        };
        self.messages.insert(id, Box::new(message));
        for (queue, rcpts) in per_queue {
            let q = &mut self.queues[queue.0 as usize];
            if q.settings.retry_upon_new_mail {
                // The queue is scheduled again, hosts that failed included.
                q.retry_until = None;
                q.mx_down.clear();
            }
            q.queued_rcpts += rcpts.len();
            self.events.push_back(EngineEvent::Queued {
                at: now,
                queue: q.name.clone(),
                domain: q.domain.clone(),
                vmta: q.vmta.clone(),
                recipients: rcpts.len() as u64,
            });
            // `bounce-after` counts from the first queueing (a recovered message keeps it).
            let expires = queued_at.plus_secs(q.settings.bounce_after_s);
            q.expiries.insert((expires, id), rcpts.clone());
            q.ready.push_back(Entry { msg: id, rcpts });
            self.dirty.insert(queue);
        }
        self.run(now);
        Ok(id)
    }

    /// Picks the virtual MTA (and pool) for a message.
    fn route(
        &mut self,
        injection: &Injection,
        x_virtual_mta: Option<String>,
        failures: &mut Vec<classify::PatternFailure>,
    ) -> Result<(String, String), InjectError> {
        let source = injection
            .source_ip
            .and_then(|ip| {
                self.config.source_blocks.iter().find(|s| {
                    crate::config::value::parse_cidr(&s.selector)
                        .is_ok_and(|c: Cidr| c.contains(ip))
                })
            })
            .map(|s| SourceSettings::read(&s.settings, None))
            .unwrap_or_default();
        let mut name = None;
        if source.process_x_virtual_mta || injection.source_ip.is_none() {
            name = x_virtual_mta;
        }
        if name.is_none()
            && let Some(list) = &source.pattern_list
            && let Some(list) = self.config.pattern_lists.get(list)
        {
            name = list.rules.iter().find_map(|rule| {
                let subject = match rule.field {
                    crate::config::model::EnvelopeField::MailFrom => &injection.mail_from,
                    crate::config::model::EnvelopeField::RcptTo => &injection.recipients[0],
                };
                classify::pattern_matches(
                    &rule.pattern,
                    classify::RuleOrigin::Config,
                    rule.span,
                    subject,
                    failures,
                )
                .then(|| rule.virtual_mta.value.clone())
            });
        }
        let name = name
            .or_else(|| injection.virtual_mta.clone())
            .or(source.default_virtual_mta)
            .or_else(|| self.globals.default_virtual_mta.clone())
            .ok_or(InjectError::NoVirtualMta)?;
        self.member_of(name)
    }

    /// The virtual MTA `name` names, or the next member of pool `name`, with the pool.
    fn member_of(&mut self, name: String) -> Result<(String, String), InjectError> {
        if self.config.virtual_mtas.contains_key(&name) {
            return Ok((name, String::new()));
        }
        let Some(pool) = self.config.pools.get(&name) else {
            return Err(InjectError::UnknownVirtualMta(name));
        };
        // Pools rotate their members message by message.
        let next = self.pool_next.entry(name.clone()).or_insert(0);
        let member = pool.members[*next % pool.members.len()].value.clone();
        *next = (*next + 1) % pool.members.len();
        Ok((member, name))
    }

    /// The queue a recipient at `domain` routed to `vmta` ends in: `reroute-to-virtual-mta`
    /// (always) and `backoff-reroute-to-virtual-mta` (while the queue is in backoff) followed
    /// for at most `REROUTE_HOPS_MAX` hops, a loop stopping where it closes; then the
    /// virtual MTA's `cold-virtual-mta` twin takes the day's first `max-cold-virtual-mta-msg`
    /// messages per domain (the list advancing a day at a time from the first use, the last
    /// value repeating).
    fn queue_routed(
        &mut self,
        now: Time,
        domain: &str,
        vmta: &str,
        pool: &str,
    ) -> Result<QueueId, InjectError> {
        let mut id = self.queue_for(domain, vmta, pool)?;
        let mut seen = vec![id];
        for _ in 0..REROUTE_HOPS_MAX {
            let q = &self.queues[id.0 as usize];
            let target = q.settings.reroute_to_virtual_mta.clone().or_else(|| {
                (q.mode == QueueMode::Backoff)
                    .then(|| q.settings.backoff_reroute_to_virtual_mta.clone())
                    .flatten()
            });
            let Some(target) = target else {
                break;
            };
            let (member, pool) = self.member_of(target)?;
            let next = self.queue_for(domain, &member, &pool)?;
            if seen.contains(&next) {
                break;
            }
            seen.push(next);
            id = next;
        }
        let q = &self.queues[id.0 as usize];
        let limits = &q.settings.max_cold_virtual_mta_msg_per_day;
        let cold = self
            .config
            .virtual_mtas
            .get(&q.vmta)
            .and_then(|v| VirtualMtaSettings::read(&v.settings, None).cold_virtual_mta)
            .filter(|cold| self.config.virtual_mtas.contains_key(cold));
        if let (Some(cold), false) = (cold, limits.is_empty()) {
            let today = now.unix_secs() / 86_400;
            let use_ = self
                .cold_use
                .entry((q.domain.clone(), q.vmta.clone()))
                .or_insert((today, today, 0));
            if use_.1 != today {
                *use_ = (use_.0, today, 0);
            }
            let day = (today - use_.0) as usize;
            let limit = limits[day.min(limits.len() - 1)];
            if use_.2 < limit {
                use_.2 += 1;
                let pool = q.pool.clone();
                id = self.queue_for(domain, &cold, &pool)?;
            }
        }
        Ok(id)
    }

    /// `backoff-reroute-to-virtual-mta`: on the switch into backoff, the queue's waiting
    /// recipients move to the target's queue for their domain (those in a transaction stay
    /// and come back here if deferred).
    fn reroute_on_backoff(&mut self, q: QueueId) {
        let queue = &mut self.queues[q.0 as usize];
        let Some(target) = queue.settings.backoff_reroute_to_virtual_mta.clone() else {
            return;
        };
        let domain = queue.domain.clone();
        let Ok((member, pool)) = self.member_of(target) else {
            return;
        };
        let Ok(to) = self.queue_for(&domain, &member, &pool) else {
            return;
        };
        if to == q {
            return;
        }
        let from = &mut self.queues[q.0 as usize];
        let entries: Vec<Entry> = from
            .ready
            .drain(..)
            .chain(std::mem::take(&mut from.waiting).into_values())
            .collect();
        let expiries = std::mem::take(&mut from.expiries);
        let moved: usize = entries.iter().map(|e| e.rcpts.len()).sum();
        from.queued_rcpts = from.queued_rcpts.saturating_sub(moved);
        let to_queue = &mut self.queues[to.0 as usize];
        to_queue.queued_rcpts += moved;
        to_queue.ready.extend(entries);
        for (key, rcpts) in expiries {
            to_queue.expiries.entry(key).or_default().extend(rcpts);
        }
        self.dirty.insert(to);
    }

    fn queue_for(&mut self, domain: &str, vmta: &str, pool: &str) -> Result<QueueId, InjectError> {
        if let Some(id) = self.routes.get(&(domain.to_string(), vmta.to_string())) {
            return Ok(*id);
        }
        let view = queue::explain(&self.config, &format!("{domain}/{vmta}"))
            .map_err(|e| InjectError::Queue(e.to_string()))?;
        let name = view.queue_name();
        // Several domains may share one queue through queue-to.
        let id = match self.queue_ids.get(&name) {
            Some(id) => *id,
            None => {
                if self.queues.len() >= QUEUES_MAX {
                    return Err(InjectError::Full);
                }
                let settings = QueueSettings::from_view(&view);
                let horizon =
                    rate_horizon_ms(&[settings.max_msg_rate, settings.backoff_max_msg_rate]);
                let connect_horizon = rate_horizon_ms(&[
                    settings.max_connect_rate,
                    settings.backoff_max_connect_rate,
                ]);
                let mx_lookup = view.queue_domain.clone();
                let per_ip_horizon_ms = DAY_MS.min(
                    settings
                        .source_ip_max_msg_rate
                        .max_window_ms()
                        .max(settings.source_ip_max_connect_rate.max_window_ms()),
                );
                self.queues.push(Queue {
                    name: name.clone(),
                    domain: view.queue_domain.clone(),
                    vmta: vmta.to_string(),
                    pool: pool.to_string(),
                    settings,
                    ready: VecDeque::new(),
                    waiting: BTreeMap::new(),
                    queued_rcpts: 0,
                    mode: QueueMode::Normal,
                    backoff_leave_at: None,
                    retry_until: None,
                    retry_index: 0,
                    connections: BTreeSet::new(),
                    opening: 0,
                    idle: Vec::new(),
                    rcpt_window: Window::new(horizon),
                    connect_window: Window::new(connect_horizon),
                    last_connect: None,
                    disabled_ips: BTreeMap::new(),
                    next_source: 0,
                    mx_lookup,
                    mx: MxState::Unknown,
                    wake_at: None,
                    held: HeldBy::Sending,
                    per_ip: BTreeMap::new(),
                    no_mx_since: None,
                    per_ip_horizon_ms,
                    expiries: BTreeMap::new(),
                    mx_down: BTreeMap::new(),
                    share: match &self.shared {
                        Some(node) if node.state == SharedState::Fallback => node.nodes,
                        _ => 1,
                    },
                    permits: QueuePermits::default(),
                });
                let id = QueueId((self.queues.len() - 1) as u32);
                self.queue_ids.insert(name, id);
                id
            }
        };
        self.routes
            .insert((domain.to_string(), vmta.to_string()), id);
        Ok(id)
    }

    /// The answer to [`Action::ResolveMx`].
    pub fn handle_mx(&mut self, now: Time, domain: &str, answer: MxAnswer) {
        self.advance(now);
        self.mx_requested.remove(domain);
        let mut targets = Vec::new();
        let state = match answer {
            MxAnswer::Hosts(mut hosts) => {
                hosts.sort_by_key(|h| h.preference);
                for host in hosts {
                    for ip in host.addresses {
                        if targets.len() < MX_TARGETS_MAX {
                            targets.push(Target {
                                host: host.name.clone(),
                                ip,
                                port: host.port,
                            });
                        }
                    }
                }
                if targets.is_empty() {
                    MxState::NoMailHost { since: now }
                } else {
                    MxState::Known(targets)
                }
            }
            MxAnswer::NoMailHost => MxState::NoMailHost { since: now },
            MxAnswer::TempFail(reason) => {
                for id in 0..self.queues.len() {
                    if self.queues[id].mx_lookup == domain
                        && matches!(self.queues[id].mx, MxState::Pending)
                    {
                        self.queues[id].mx = MxState::Unknown;
                        self.dns_failure(now, QueueId(id as u32), &reason);
                    }
                }
                self.run(now);
                return;
            }
        };
        for id in 0..self.queues.len() {
            let queue = &mut self.queues[id];
            if queue.mx_lookup == domain {
                queue.mx = match &state {
                    // `bounce-upon-no-mx 1h` counts from the first answer without a host.
                    MxState::NoMailHost { .. } => MxState::NoMailHost {
                        since: *queue.no_mx_since.get_or_insert(now),
                    },
                    other => {
                        queue.no_mx_since = None;
                        other.clone()
                    }
                };
                self.dirty.insert(QueueId(id as u32));
            }
        }
        self.run(now);
    }

    pub fn handle_connected(&mut self, now: Time, conn: ConnectionId) {
        self.advance(now);
        let Some(c) = self.connections.get_mut(&conn) else {
            return;
        };
        c.state = ConnState::Open;
        let timeout = self.queues[c.queue.0 as usize]
            .settings
            .smtp_greeting_timeout_s;
        self.set_deadline(conn, Some(now.plus_secs(timeout)));
        self.run(now);
    }

    pub fn handle_connect_failed(&mut self, now: Time, conn: ConnectionId, reason: &str) {
        self.advance(now);
        self.connection_failed(
            now,
            conn,
            None,
            &format!("connection failed: {reason}"),
            Some(ReplyPhase::Connect),
        );
        self.run(now);
    }

    pub fn handle_tls_established(&mut self, now: Time, conn: ConnectionId) {
        self.advance(now);
        if let Some(c) = self.connections.get_mut(&conn) {
            c.session.tls_established();
            self.pump(now, conn);
        }
        self.run(now);
    }

    pub fn handle_bytes(&mut self, now: Time, conn: ConnectionId, bytes: &[u8]) {
        self.advance(now);
        if let Some(c) = self.connections.get_mut(&conn) {
            c.session.handle_bytes(bytes);
            self.pump(now, conn);
        }
        self.run(now);
    }

    /// The peer closed the connection (or the driver lost it).
    pub fn handle_closed(&mut self, now: Time, conn: ConnectionId) {
        self.advance(now);
        if let Some(c) = self.connections.get(&conn) {
            // After QUIT, or after a 421 that announced it, the close is the expected end.
            let expected = c.state == ConnState::Quitting || c.session.closing_announced();
            if expected && c.in_flight.is_none() {
                self.drop_connection(now, conn);
            } else {
                let phase = failure_phase(c);
                self.connection_failed(
                    now,
                    conn,
                    None,
                    "connection closed by the remote host",
                    phase,
                );
            }
        }
        self.run(now);
    }

    /// The answer to [`Action::LoadMessage`]: the message's data as injected, or why it
    /// could not be read. The transactions waiting for it begin; if it could not be read,
    /// their recipients are deferred (`451 4.3.0`) and retried as any deferral is.
    pub fn handle_message_data(
        &mut self,
        now: Time,
        message: MessageId,
        data: Result<MessageData, String>,
    ) {
        self.advance(now);
        let waiting = self.loading.remove(&message).unwrap_or_default();
        let still_waiting = |engine: &Engine, conn: &ConnectionId| {
            engine.connections.get(conn).is_some_and(|c| {
                c.loading && c.in_flight.as_ref().is_some_and(|e| e.msg == message)
            })
        };
        match data {
            Ok(data) => {
                if let Some(m) = self.messages.get_mut(&message) {
                    m.data = Some(data);
                }
                for conn in waiting {
                    if still_waiting(self, &conn) {
                        self.begin_transaction(now, conn);
                    }
                }
                // The bytes to send are made; the body goes back to the driver.
                if self.bodies == Bodies::Driver
                    && let Some(m) = self.messages.get_mut(&message)
                {
                    m.data = None;
                }
            }
            Err(reason) => {
                let reply = Reply::new(
                    451,
                    Some([4, 3, 0]),
                    format!("message data unreadable: {reason}"),
                );
                for conn in waiting {
                    if !still_waiting(self, &conn) {
                        continue;
                    }
                    let c = self.connections.get_mut(&conn).expect("checked above");
                    c.loading = false;
                    let q = c.queue;
                    if let Some(entry) = c.in_flight.take() {
                        self.defer_recipients(now, q, &entry, &reply, Some(conn), None);
                    }
                    self.feed(now, conn);
                }
            }
        }
        self.run(now);
    }

    /// The driver is shutting down: no new connection or transaction from now on. Idle
    /// connections quit now, the others after the transaction they carry, so what was sent
    /// is settled (and journalled by a live driver) rather than sent again after a restart.
    /// Recipients stay queued.
    pub fn handle_stop(&mut self, now: Time) {
        self.advance(now);
        self.stopping = true;
        let idle: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, c)| c.ready)
            .map(|(id, _)| *id)
            .collect();
        for conn in idle {
            self.quit(now, conn);
        }
        self.run(now);
    }

    /// Runs everything due at or before `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        while let Some(&(at, seq, kind)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, seq, kind));
            match kind {
                TimerKind::Queue(q) => {
                    let queue = &mut self.queues[q.0 as usize];
                    if queue.wake_at == Some(at) {
                        queue.wake_at = None;
                    }
                    self.dirty.insert(q);
                }
                TimerKind::Connection(conn) => {
                    let due = self
                        .connections
                        .get(&conn)
                        .is_some_and(|c| c.deadline == Some(at));
                    if due {
                        self.connection_timeout(now, conn);
                    }
                }
            }
        }
        self.run(now);
    }

    fn advance(&mut self, now: Time) {
        assert!(
            now >= self.last_now,
            "time never goes backwards: {now:?} < {:?}",
            self.last_now
        );
        self.last_now = now;
    }

    // --- timers ------------------------------------------------------------------------------

    fn push_timer(&mut self, at: Time, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq, kind));
    }

    fn wake_queue(&mut self, q: QueueId, at: Time) {
        let queue = &mut self.queues[q.0 as usize];
        if queue.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        queue.wake_at = Some(at);
        self.push_timer(at, TimerKind::Queue(q));
    }

    fn set_deadline(&mut self, conn: ConnectionId, at: Option<Time>) {
        let Some(c) = self.connections.get_mut(&conn) else {
            return;
        };
        c.deadline = at;
        if let Some(at) = at {
            self.push_timer(at, TimerKind::Connection(conn));
        }
    }

    // --- scheduling --------------------------------------------------------------------------

    /// Schedules every queue that something happened to, higher `queue-priority` first.
    fn run(&mut self, now: Time) {
        let mut rounds = 0;
        while !self.dirty.is_empty() {
            rounds += 1;
            assert!(rounds < 1_000_000, "scheduling does not converge");
            let mut dirty: Vec<QueueId> = std::mem::take(&mut self.dirty).into_iter().collect();
            dirty.sort_by_key(|q| {
                (
                    std::cmp::Reverse(self.queues[q.0 as usize].settings.queue_priority),
                    *q,
                )
            });
            for q in dirty {
                self.schedule(now, q);
            }
        }
    }

    fn schedule(&mut self, now: Time, q: QueueId) {
        self.decisions += 1;
        self.leave_backoff_if_due(now, q);
        self.reenable_sources(now, q);
        self.promote_waiting(now, q);
        self.expire(now, q);
        if self.is_paused(q) {
            // Transactions in flight finish; idle connections close; nothing new starts.
            for conn in std::mem::take(&mut self.queues[q.0 as usize].idle) {
                self.quit(now, conn);
            }
            self.hold(now, q, HeldBy::Paused, None);
            return;
        }
        let queue = &self.queues[q.0 as usize];
        if queue.ready.is_empty() {
            // Idle connections stay until their connection-idle-timeout. Retry mode holds
            // the queue first: deferred recipients could not leave before it ends either.
            let (limit, until) = match (queue.retry_until, queue.waiting.first_key_value()) {
                (Some(until), _) if until > now => (
                    HeldBy::in_mode(queue.mode, HeldBy::RetryAfter, HeldBy::BackoffRetryAfter),
                    Some(until),
                ),
                (_, Some(((until, _), _))) => (HeldBy::RetryRecipientsAfter, Some(*until)),
                (_, None) => (HeldBy::Sending, None),
            };
            self.hold(now, q, limit, until);
            return;
        }
        // Retry mode holds back new connection attempts; connections already established
        // keep delivering (a refused extra connection must not stop working ones).
        match queue.retry_until {
            Some(until) if until > now => {
                let limit =
                    HeldBy::in_mode(queue.mode, HeldBy::RetryAfter, HeldBy::BackoffRetryAfter);
                self.hold(now, q, limit, Some(until));
                self.wake_queue(q, until);
                self.feed_idle(now, q);
                return;
            }
            Some(_) => self.queues[q.0 as usize].retry_until = None,
            None => {}
        }
        if self.queues[q.0 as usize].settings.delivery_type != DeliveryType::Smtp {
            self.discard_all(now, q);
            return;
        }
        // Matched in place: the targets are not copied on every scheduling decision.
        match self.queues[q.0 as usize].mx {
            MxState::Pending => {
                self.hold(now, q, HeldBy::MxLookup, None);
                return;
            }
            MxState::Unknown => {
                self.hold(now, q, HeldBy::MxLookup, None);
                self.request_mx(q);
                return;
            }
            MxState::NoMailHost { since } => {
                self.no_mail_host(now, q, since);
                return;
            }
            MxState::Known(_) => {}
        }
        // Give idle connections work first, then open new ones.
        self.feed_idle(now, q);
        self.open_connections(now, q);
    }

    /// Hands work to the queue's idle connections until one finds none.
    fn feed_idle(&mut self, now: Time, q: QueueId) {
        while let Some(conn) = self.queues[q.0 as usize].idle.pop() {
            if !self.feed(now, conn) {
                break;
            }
        }
    }

    fn request_mx(&mut self, q: QueueId) {
        let queue = &mut self.queues[q.0 as usize];
        if let Some(hosts) = &queue.settings.smtp_hosts {
            if let Some(targets) = parse_smtp_hosts(hosts) {
                queue.mx = MxState::Known(targets);
                self.dirty.insert(q);
                return;
            }
            if let Some(domain) = hosts.strip_prefix("lookup-mx:") {
                queue.mx_lookup = domain.trim().to_ascii_lowercase();
            } else if let Some(host) = hosts
                .split([',', ';'])
                .map(str::trim)
                .find(|h| !h.is_empty())
            {
                // A named host: its addresses come from the same lookup, asked by name.
                queue.mx_lookup = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
            }
        }
        queue.mx = MxState::Pending;
        let domain = queue.mx_lookup.clone();
        // One lookup per domain at a time; every queue for it takes the answer.
        if self.mx_requested.insert(domain.clone()) {
            self.actions.push_back(Action::ResolveMx { domain });
        }
    }

    fn leave_backoff_if_due(&mut self, now: Time, q: QueueId) {
        let queue = &self.queues[q.0 as usize];
        if queue.mode == QueueMode::Backoff && queue.backoff_leave_at.is_some_and(|t| t <= now) {
            self.set_mode(
                now,
                q,
                QueueMode::Normal,
                ModeTrigger::BackoffToNormalAfter,
                None,
            );
        } else if let Some(at) = queue.backoff_leave_at {
            self.wake_queue(q, at);
        }
    }

    fn reenable_sources(&mut self, now: Time, q: QueueId) {
        let queue = &mut self.queues[q.0 as usize];
        let due: Vec<IpAddr> = queue
            .disabled_ips
            .iter()
            .filter(|(_, until)| until.is_some_and(|t| t <= now))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in due {
            queue.disabled_ips.remove(&ip);
        }
        let next = queue.disabled_ips.values().flatten().min().copied();
        if let Some(at) = next {
            self.wake_queue(q, at);
        }
    }

    fn promote_waiting(&mut self, now: Time, q: QueueId) {
        let queue = &mut self.queues[q.0 as usize];
        while let Some(entry) = queue.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            queue.ready.push_back(entry.remove());
        }
        if let Some(((at, _), _)) = queue.waiting.first_key_value() {
            let at = *at;
            self.wake_queue(q, at);
        }
    }

    /// Bounces every recipient of the queue older than `bounce-after`, wherever it waits:
    /// ready, or waiting out `retry-recipients-after` (PowerMTA: "messages older than this
    /// time interval are bounced"). One in a transaction is judged when the transaction ends.
    /// The queue wakes for the next expiry, so each bounce is written on time.
    fn expire(&mut self, now: Time, q: QueueId) {
        loop {
            let queue = &mut self.queues[q.0 as usize];
            let Some(entry) = queue.expiries.first_entry() else {
                return;
            };
            let at = entry.key().0;
            if at > now {
                self.wake_queue(q, at);
                return;
            }
            let ((_, msg), rcpts) = entry.remove_entry();
            let waiting = self.live(&Entry { msg, rcpts });
            if !waiting.rcpts.is_empty() {
                self.settle_entry(
                    now,
                    q,
                    &waiting,
                    &expired_reply(),
                    None,
                    RecordType::Bounced,
                    None,
                );
            }
        }
    }

    /// The recipients of `entry` still waiting in their queue (those settled meanwhile
    /// dropped).
    fn live(&self, entry: &Entry) -> Entry {
        let rcpts = match self.messages.get(&entry.msg) {
            Some(m) => entry
                .rcpts
                .iter()
                .copied()
                .filter(|r| m.rcpt_state[*r as usize] == RcptState::Waiting)
                .collect(),
            None => Vec::new(),
        };
        Entry {
            msg: entry.msg,
            rcpts,
        }
    }

    /// Whether `msg` has been queued longer than the queue's `bounce-after`.
    fn is_expired(&self, now: Time, q: QueueId, msg: MessageId) -> bool {
        let bounce_after = self.queues[q.0 as usize].settings.bounce_after_s;
        self.messages
            .get(&msg)
            .is_some_and(|m| now >= m.queued_at.plus_secs(bounce_after))
    }

    fn discard_all(&mut self, now: Time, q: QueueId) {
        let drained: Vec<Entry> = self.queues[q.0 as usize].ready.drain(..).collect();
        let entries: Vec<Entry> = drained.iter().map(|e| self.live(e)).collect();
        let kind = self.queues[q.0 as usize].settings.delivery_type.name();
        let reply = Reply::new(
            250,
            Some([2, 0, 0]),
            format!("delivered locally (type {kind})"),
        );
        for entry in entries.iter().filter(|e| !e.rcpts.is_empty()) {
            self.settle_entry(now, q, entry, &reply, None, RecordType::Delivered, None);
        }
    }

    fn no_mail_host(&mut self, now: Time, q: QueueId, since: Time) {
        let policy = self.queues[q.0 as usize].settings.bounce_upon_no_mx;
        let bounce = match policy {
            NoMxPolicy::Bounce => true,
            NoMxPolicy::BounceAfter { seconds } => now >= since.plus_secs(seconds),
            NoMxPolicy::Retry => false,
        };
        if bounce {
            let reply = Reply::new(550, Some([5, 1, 2]), "no mail host for the domain (no MX)");
            self.bounce_queue(now, q, &reply, None);
        } else {
            self.queues[q.0 as usize].mx = MxState::Unknown;
            self.dns_failure(now, q, "no mail host for the domain");
        }
    }

    fn dns_failure(&mut self, now: Time, q: QueueId, reason: &str) {
        let wait = self.queues[q.0 as usize].settings.retry_after_dns_error_s;
        let until = now.plus_secs(wait);
        self.queue_record(now, q, None, &format!("dns;{reason}"), "4.4.3", None);
        self.hold_until(now, q, until);
    }

    /// Retry mode: no new connection attempts for the queue before `until`.
    fn hold_until(&mut self, now: Time, q: QueueId, until: Time) {
        let queue = &mut self.queues[q.0 as usize];
        queue.retry_until = Some(until);
        let limit = HeldBy::in_mode(queue.mode, HeldBy::RetryAfter, HeldBy::BackoffRetryAfter);
        self.events.push_back(EngineEvent::RetryScheduled {
            at: now,
            queue: queue.name.clone(),
            domain: queue.domain.clone(),
            vmta: queue.vmta.clone(),
            until,
        });
        self.hold(now, q, limit, Some(until));
        self.wake_queue(q, until);
    }

    /// Notes what holds the queue back; a change is reported as [`EngineEvent::QueueHeld`].
    fn hold(&mut self, now: Time, q: QueueId, limit: HeldBy, until: Option<Time>) {
        let queue = &mut self.queues[q.0 as usize];
        if queue.held == limit {
            return;
        }
        queue.held = limit;
        self.events.push_back(EngineEvent::QueueHeld {
            at: now,
            queue: queue.name.clone(),
            domain: queue.domain.clone(),
            vmta: queue.vmta.clone(),
            limit,
            until,
        });
    }

    /// Opens connections while the queue has work and its limits allow.
    fn open_connections(&mut self, now: Time, q: QueueId) {
        if self.stopping {
            return;
        }
        loop {
            let queue = &mut self.queues[q.0 as usize];
            let mode = queue.mode;
            let demand = queue.ready.len();
            if demand <= queue.opening {
                self.hold(now, q, HeldBy::Sending, None);
                return;
            }
            if queue.connections.len() as u64 >= queue.max_smtp_out() {
                // Every connection is open: the rate holds the queue back if its window is
                // full (the connections idle), else the connections do (they are busy).
                let msg_rate = queue.msg_rate();
                let held = match queue.rcpt_window.next_allowed(msg_rate, now) {
                    Some(at) => (
                        HeldBy::in_mode(mode, HeldBy::MaxMsgRate, HeldBy::BackoffMaxMsgRate),
                        Some(at),
                    ),
                    None => (
                        HeldBy::in_mode(mode, HeldBy::MaxSmtpOut, HeldBy::BackoffMaxSmtpOut),
                        None,
                    ),
                };
                self.hold(now, q, held.0, held.1);
                return;
            }
            if self
                .globals
                .total_max_smtp_out
                .is_some_and(|max| self.total_connections as u64 >= max)
            {
                self.hold(now, q, HeldBy::TotalMaxSmtpOut, None);
                return;
            }
            if self.connections.len() >= CONNECTIONS_MAX {
                self.hold(now, q, HeldBy::EngineConnections, None);
                return;
            }
            // Self-imposed waits: rampup, connect rate and message rate. None counts as
            // a failed attempt.
            let rampup_ms = queue.settings.smtp_out_rampup_interval_s * 1000;
            if let Some(last) = queue.last_connect
                && rampup_ms > 0
                && now.since(last) < rampup_ms
            {
                let at = last.plus_ms(rampup_ms);
                self.hold(now, q, HeldBy::Rampup, Some(at));
                self.wake_queue(q, at);
                return;
            }
            let connect_rate = queue.connect_rate();
            if let Some(at) = queue.connect_window.next_allowed(connect_rate, now) {
                let limit =
                    HeldBy::in_mode(mode, HeldBy::MaxConnectRate, HeldBy::BackoffMaxConnectRate);
                self.hold(now, q, limit, Some(at));
                self.wake_queue(q, at);
                return;
            }
            let msg_rate = queue.msg_rate();
            if let Some(at) = queue.rcpt_window.next_allowed(msg_rate, now) {
                let limit = HeldBy::in_mode(mode, HeldBy::MaxMsgRate, HeldBy::BackoffMaxMsgRate);
                self.hold(now, q, limit, Some(at));
                self.wake_queue(q, at);
                return;
            }
            if let Some(at) = self.shared_messages_retry_at(now, q) {
                // The store's window is full: a connection opened now would find nothing
                // to send, and quit.
                let limit = HeldBy::in_mode(mode, HeldBy::MaxMsgRate, HeldBy::BackoffMaxMsgRate);
                self.hold(now, q, limit, Some(at));
                self.wake_queue(q, at);
                return;
            }
            if !self.shared_may_open(now, q) {
                return;
            }
            let target = match self.live_target(now, q) {
                Ok(target) => target,
                Err(revives) => {
                    // Every host failed recently: wait until the first may be tried again.
                    let limit =
                        HeldBy::in_mode(mode, HeldBy::RetryAfter, HeldBy::BackoffRetryAfter);
                    self.hold(now, q, limit, revives);
                    if let Some(at) = revives {
                        self.wake_queue(q, at);
                    }
                    return;
                }
            };
            let Some(source_ip) = self.pick_source(now, q) else {
                return;
            };
            self.open(now, q, source_ip, target);
        }
    }

    // --- shared throttles ----------------------------------------------------------------

    /// The answer to [`Action::Permits`] carrying `request` for `queue`.
    pub fn handle_permits(
        &mut self,
        now: Time,
        queue: &str,
        request: &PermitRequest,
        answer: PermitAnswer,
    ) {
        self.advance(now);
        let Some(state) = self.shared.as_ref().map(|node| node.state) else {
            return;
        };
        let q = self.queue_ids.get(queue).copied();
        let probe_at = now.plus_ms(shared::PROBE_INTERVAL_MS);
        match answer {
            PermitAnswer::Unavailable => {
                if state == SharedState::Shared {
                    self.change_shared_state(now, SharedState::Fallback);
                }
                if let Some(q) = q {
                    // Not dirty: the queue goes on with its share, and asks again later.
                    let p = &mut self.queues[q.0 as usize].permits;
                    match request {
                        PermitRequest::Messages { .. } => {
                            p.asking_messages = false;
                            p.messages_retry_at = Some(probe_at);
                        }
                        PermitRequest::Connection { .. } => p.asking_connection = false,
                        PermitRequest::Holding { .. } | PermitRequest::Backoff { .. } => {}
                    }
                }
            }
            PermitAnswer::Granted {
                granted,
                retry_at,
                backoff_until,
            } => {
                let returning = state == SharedState::Fallback;
                if returning {
                    self.change_shared_state(now, SharedState::Shared);
                }
                let Some(q) = q else {
                    self.run(now);
                    return;
                };
                let again = |granted: u64| {
                    (granted == 0).then(|| retry_at.filter(|t| *t > now).unwrap_or(probe_at))
                };
                let queue = &mut self.queues[q.0 as usize];
                let p = &mut queue.permits;
                match request {
                    PermitRequest::Messages { .. } => {
                        p.asking_messages = false;
                        // Granted to a probe while on the share: the quiet window drops them.
                        p.tokens = if returning { 0 } else { granted };
                        p.tokens_at = now;
                        p.messages_retry_at = again(granted);
                    }
                    PermitRequest::Connection { .. } => {
                        p.asking_connection = false;
                        p.connections += granted;
                        p.connection_retry_at = again(granted);
                    }
                    PermitRequest::Holding { .. } | PermitRequest::Backoff { .. } => {}
                }
                if let Some(until) = backoff_until.filter(|t| *t > now)
                    && queue.mode == QueueMode::Normal
                {
                    let leave_s = until.since(now).div_ceil(1000);
                    self.set_mode(
                        now,
                        q,
                        QueueMode::Backoff,
                        ModeTrigger::SharedStore,
                        Some(Some(leave_s)),
                    );
                }
                self.dirty.insert(q);
            }
        }
        self.run(now);
    }

    /// The node found the store again, or lost it: every queue's limits change, and a
    /// quiet window of each queue's rate begins (see [`shared`]).
    fn change_shared_state(&mut self, now: Time, state: SharedState) {
        let Some(node) = self.shared.as_mut() else {
            return;
        };
        node.state = state;
        node.changed_at = Some(now);
        let nodes = node.nodes;
        let share = match state {
            SharedState::Shared => 1,
            SharedState::Fallback => nodes,
        };
        for (index, queue) in self.queues.iter_mut().enumerate() {
            queue.share = share;
            let p = &mut queue.permits;
            p.tokens = 0;
            p.messages_retry_at = None;
            p.connection_retry_at = None;
            if state == SharedState::Shared {
                // The connections opened on the share count again in the store, and those
                // closed while it was away no longer do (zero included).
                p.connections = queue.connections.len() as u64;
                self.actions.push_back(Action::Permits {
                    queue: queue.name.clone(),
                    request: PermitRequest::Holding {
                        holding: p.connections,
                    },
                });
            }
            self.dirty.insert(QueueId(index as u32));
        }
        self.events.push_back(EngineEvent::SharedThrottles {
            at: now,
            state,
            nodes,
        });
    }

    /// The end of the quiet window after the node's shared state changed, while it lasts.
    fn quiet_until(&self, now: Time, q: QueueId) -> Option<Time> {
        let changed = self.shared.as_ref()?.changed_at?;
        let settings = &self.queues[q.0 as usize].settings;
        let window_ms = rate_horizon_ms(&[settings.max_msg_rate, settings.backoff_max_msg_rate]);
        // One probe interval more: a node may still send on its share until its next probe
        // after the store came back.
        let until = changed.plus_ms(window_ms + shared::PROBE_INTERVAL_MS);
        (until > now).then_some(until)
    }

    /// With `shared-throttles` and the limits shared, when the store said the queue's window
    /// has room again, while that is still to come.
    fn shared_messages_retry_at(&self, now: Time, q: QueueId) -> Option<Time> {
        if self.shared.as_ref()?.state != SharedState::Shared {
            return None;
        }
        self.queues[q.0 as usize]
            .permits
            .messages_retry_at
            .filter(|t| *t > now)
    }

    /// With `shared-throttles`, whether the other nodes leave the queue room for one more
    /// connection: holds the queue and asks the store when not.
    fn shared_may_open(&mut self, now: Time, q: QueueId) -> bool {
        let Some(state) = self.shared.as_ref().map(|node| node.state) else {
            return true;
        };
        let mode = self.queues[q.0 as usize].mode;
        if let Some(until) = self.quiet_until(now, q) {
            let limit = HeldBy::in_mode(mode, HeldBy::MaxMsgRate, HeldBy::BackoffMaxMsgRate);
            self.hold(now, q, limit, Some(until));
            self.wake_queue(q, until);
            return false;
        }
        let queue = &mut self.queues[q.0 as usize];
        if state == SharedState::Fallback
            || queue.permits.connections > queue.connections.len() as u64
        {
            return true;
        }
        let limit = HeldBy::in_mode(mode, HeldBy::MaxSmtpOut, HeldBy::BackoffMaxSmtpOut);
        if let Some(at) = queue.permits.connection_retry_at.filter(|t| *t > now) {
            self.hold(now, q, limit, Some(at));
            self.wake_queue(q, at);
            return false;
        }
        if !queue.permits.asking_connection {
            queue.permits.asking_connection = true;
            let request = PermitRequest::Connection {
                holding: queue.permits.connections,
                max: queue.full_max_smtp_out(),
            };
            self.actions.push_back(Action::Permits {
                queue: queue.name.clone(),
                request,
            });
        }
        self.hold(now, q, limit, None);
        false
    }

    /// With `shared-throttles`, how many of `wanted` recipients the other nodes leave the
    /// queue now, and when to look again if none: the store's grant at this instant, none
    /// while asking or in the quiet window, any on the node's share (after a probe).
    fn shared_allowance(&mut self, now: Time, q: QueueId, wanted: u64) -> (u64, Option<Time>) {
        let Some(state) = self.shared.as_ref().map(|node| node.state) else {
            return (u64::MAX, None);
        };
        if let Some(until) = self.quiet_until(now, q) {
            return (0, Some(until));
        }
        let queue = &mut self.queues[q.0 as usize];
        let rate = queue.full_msg_rate();
        if rate == Rate::Unlimited {
            return (u64::MAX, None);
        }
        let p = &mut queue.permits;
        let ask = |p: &mut QueuePermits, n: u64| {
            p.asking_messages = true;
            Action::Permits {
                queue: queue.name.clone(),
                request: PermitRequest::Messages { n, rate },
            }
        };
        match state {
            SharedState::Fallback => {
                // Asked before each send on the share, so none follows the store's return.
                if !p.asking_messages && p.messages_retry_at.is_none_or(|t| t <= now) {
                    let action = ask(p, 0);
                    self.actions.push_back(action);
                }
                (u64::MAX, None)
            }
            SharedState::Shared => {
                if p.tokens_at != now {
                    p.tokens = 0;
                }
                if p.tokens > 0 {
                    return (p.tokens, None);
                }
                if let Some(at) = p.messages_retry_at.filter(|t| *t > now) {
                    return (0, Some(at));
                }
                if !p.asking_messages {
                    let action = ask(p, wanted);
                    self.actions.push_back(action);
                }
                (0, None)
            }
        }
    }

    /// The first of the queue's MX targets, in preference order, not marked down; else when
    /// the first marked one may be tried again.
    fn live_target(&self, now: Time, q: QueueId) -> Result<usize, Option<Time>> {
        let queue = &self.queues[q.0 as usize];
        let MxState::Known(targets) = &queue.mx else {
            return Err(None);
        };
        let down_until = |t: &Target| queue.mx_down.get(&t.ip).copied().filter(|u| *u > now);
        match targets.iter().position(|t| down_until(t).is_none()) {
            Some(index) => Ok(index),
            None => Err(targets.iter().filter_map(down_until).min()),
        }
    }

    fn source_ips(&self, q: QueueId) -> Vec<IpAddr> {
        let queue = &self.queues[q.0 as usize];
        let vmta = &self.config.virtual_mtas[&queue.vmta];
        let ips: Vec<IpAddr> = vmta.source_hosts().iter().map(|h| h.ip).collect();
        if ips.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        } else {
            ips
        }
    }

    fn pick_source(&mut self, now: Time, q: QueueId) -> Option<IpAddr> {
        let ips = self.source_ips(q);
        let queue = &mut self.queues[q.0 as usize];
        let enabled: Vec<IpAddr> = ips
            .iter()
            .filter(|ip| !queue.disabled_ips.contains_key(ip))
            .copied()
            .collect();
        if enabled.is_empty() {
            let until = queue.disabled_ips.values().flatten().min().copied();
            if queue.settings.backoff_upon_all_sources_disabled && queue.mode == QueueMode::Normal {
                self.set_mode(
                    now,
                    q,
                    QueueMode::Backoff,
                    ModeTrigger::AllSourceIpsDisabled,
                    None,
                );
            }
            self.hold(now, q, HeldBy::SourceIpsDisabled, until);
            return None;
        }
        // Rotate over the enabled IPs, skipping those at their source-ip-* limits.
        let mut earliest: Option<(Time, HeldBy)> = None;
        for offset in 0..enabled.len() {
            let ip = enabled[(queue.next_source + offset) % enabled.len()];
            let settings = &queue.settings;
            let max_out = settings.source_ip_max_smtp_out.get(ip);
            let connect_rate = settings
                .source_ip_max_connect_rate
                .get(ip)
                .unwrap_or(Rate::Unlimited);
            let msg_rate = settings
                .source_ip_max_msg_rate
                .get(ip)
                .unwrap_or(Rate::Unlimited);
            let horizon_ms = queue.per_ip_horizon_ms;
            let per_ip = queue
                .per_ip
                .entry(ip)
                .or_insert_with(|| PerIp::new(horizon_ms));
            if max_out.is_some_and(|max| per_ip.connections >= max) {
                continue;
            }
            let wait = match per_ip.connect_window.next_allowed(connect_rate, now) {
                Some(at) => Some((at, HeldBy::SourceIpMaxConnectRate)),
                None => per_ip
                    .rcpt_window
                    .next_allowed(msg_rate, now)
                    .map(|at| (at, HeldBy::SourceIpMaxMsgRate)),
            };
            if let Some(wait) = wait {
                earliest = Some(earliest.map_or(wait, |e| e.min(wait)));
                continue;
            }
            queue.next_source = (queue.next_source + offset + 1) % enabled.len();
            return Some(ip);
        }
        match earliest {
            Some((at, limit)) => {
                self.hold(now, q, limit, Some(at));
                self.wake_queue(q, at);
            }
            None => self.hold(now, q, HeldBy::SourceIpMaxSmtpOut, None),
        }
        None
    }

    fn ehlo_name(&self, q: QueueId, source_ip: IpAddr) -> String {
        let queue = &self.queues[q.0 as usize];
        let vmta = &self.config.virtual_mtas[&queue.vmta];
        vmta.source_hosts()
            .iter()
            .find(|h| h.ip == source_ip)
            .map(|h| h.host.clone())
            .or_else(|| self.globals.host_name.clone())
            .unwrap_or_else(|| "localhost".to_string())
    }

    fn open(&mut self, now: Time, q: QueueId, source_ip: IpAddr, target: usize) {
        let MxState::Known(targets) = self.queues[q.0 as usize].mx.clone() else {
            return;
        };
        let Some(t) = targets.get(target).cloned() else {
            return;
        };
        let conn = ConnectionId(self.next_connection);
        self.next_connection += 1;
        let ehlo_name = self.ehlo_name(q, source_ip);
        let queue = &mut self.queues[q.0 as usize];
        queue.connections.insert(conn);
        queue.opening += 1;
        queue.last_connect = Some(now);
        queue.connect_window.record(now, 1);
        let horizon_ms = queue.per_ip_horizon_ms;
        let per_ip = queue
            .per_ip
            .entry(source_ip)
            .or_insert_with(|| PerIp::new(horizon_ms));
        per_ip.connections += 1;
        per_ip.connect_window.record(now, 1);
        let session = ClientSession::new(SessionOptions {
            ehlo_name,
            use_starttls: queue.settings.use_starttls,
            require_starttls: queue.settings.require_starttls,
            reuse_after_421: !queue.settings.smtp_421_means_mx_unavailable,
        });
        let connect_timeout = queue.settings.connect_timeout_s;
        let queue_name = queue.name.clone();
        let (domain, vmta) = (queue.domain.clone(), queue.vmta.clone());
        self.total_connections += 1;
        self.connections.insert(
            conn,
            Connection {
                queue: q,
                source_ip,
                target,
                targets,
                state: ConnState::Connecting,
                session,
                in_flight: None,
                loading: false,
                transactions: 0,
                errors: 0,
                deadline: None,
                ready: false,
            },
        );
        self.set_deadline(conn, Some(now.plus_secs(connect_timeout)));
        self.events.push_back(EngineEvent::ConnectionOpened {
            at: now,
            conn,
            queue: queue_name.clone(),
            domain,
            vmta,
            source_ip,
        });
        self.actions.push_back(Action::Connect {
            conn,
            queue: queue_name,
            source_ip,
            host: t.host,
            ip: t.ip,
            port: t.port,
        });
    }

    /// Gives a ready connection its next transaction, or lets it go. Returns false when the
    /// queue has nothing more to give now.
    fn feed(&mut self, now: Time, conn: ConnectionId) -> bool {
        let Some(c) = self.connections.get(&conn) else {
            return true;
        };
        if c.session.is_done() || c.state == ConnState::Quitting || c.session.is_resetting() {
            return true;
        }
        let q = c.queue;
        if self.stopping || self.is_paused(q) {
            self.quit(now, conn);
            return true;
        }
        let queue = &self.queues[q.0 as usize];
        let settings = &queue.settings;
        let limit_reached = (settings.max_msg_per_connection > 0
            && c.transactions >= settings.max_msg_per_connection)
            || settings
                .max_errors_per_connection
                .is_some_and(|max| c.errors >= max);
        // More connections than the mode allows (backoff-max-smtp-out after a switch to
        // backoff): this one ends with its transaction.
        let staying = queue
            .connections
            .iter()
            .filter(|id| {
                self.connections
                    .get(id)
                    .is_some_and(|o| o.state != ConnState::Quitting)
            })
            .count() as u64;
        if limit_reached || staying > queue.max_smtp_out() {
            self.quit(now, conn);
            return true;
        }
        if queue.ready.is_empty() {
            self.park(now, conn);
            return false;
        }
        let rate = queue.msg_rate();
        let source_ip = c.source_ip;
        let ip_rate = queue
            .settings
            .source_ip_max_msg_rate
            .get(source_ip)
            .unwrap_or(Rate::Unlimited);
        let queue = &mut self.queues[q.0 as usize];
        let mut allowance = queue.rcpt_window.allowance(rate, now);
        let mut next = queue.rcpt_window.next_allowed(rate, now);
        if let Some(per_ip) = queue.per_ip.get_mut(&source_ip) {
            allowance = allowance.min(per_ip.rcpt_window.allowance(ip_rate, now));
            next = next.max(per_ip.rcpt_window.next_allowed(ip_rate, now));
        }
        if self.shared.is_some() && allowance > 0 {
            // Exactly what this transaction takes (granted recipients left unused would
            // still count in the store's window).
            let queue = &self.queues[q.0 as usize];
            let front = queue.ready.front().map_or(1, |e| e.rcpts.len() as u64);
            let wanted = allowance
                .min(queue.settings.max_rcpt_per_transaction)
                .min(front);
            let (shared, wait) = self.shared_allowance(now, q, wanted.max(1));
            allowance = allowance.min(shared);
            next = next.max(wait);
        }
        if allowance == 0 {
            if let Some(at) = next {
                self.wake_queue(q, at);
            } else if self.queues[q.0 as usize].permits.asking_messages {
                // The store's answer is on its way: this connection takes the grant the
                // instant it arrives. Quitting it (a zero connection-idle-timeout) would
                // waste the grant and open another connection for every answer.
                self.wait_for_store(now, conn);
                return false;
            }
            self.park(now, conn);
            return false;
        }
        // The next recipients still waiting: entries may hold recipients settled meanwhile,
        // and a message past `bounce-after` bounces instead of going out.
        let mut entry = loop {
            let Some(front) = self.queues[q.0 as usize].ready.pop_front() else {
                self.park(now, conn);
                return false;
            };
            let live = self.live(&front);
            if live.rcpts.is_empty() {
                continue;
            }
            if self.is_expired(now, q, live.msg) {
                let reply = expired_reply();
                self.settle_entry(now, q, &live, &reply, None, RecordType::Bounced, None);
                continue;
            }
            break live;
        };
        let queue = &mut self.queues[q.0 as usize];
        let take = (queue.settings.max_rcpt_per_transaction).min(allowance) as usize;
        if entry.rcpts.len() > take {
            let rest = entry.rcpts.split_off(take);
            queue.ready.push_front(Entry {
                msg: entry.msg,
                rcpts: rest,
            });
        }
        queue.rcpt_window.record(now, entry.rcpts.len() as u64);
        queue.permits.tokens = queue
            .permits
            .tokens
            .saturating_sub(entry.rcpts.len() as u64);
        if let Some(per_ip) = queue.per_ip.get_mut(&source_ip) {
            per_ip.rcpt_window.record(now, entry.rcpts.len() as u64);
        }
        self.set_state(&entry, RcptState::Sending);
        let msg = entry.msg;
        let c = self.connections.get_mut(&conn).expect("checked above");
        c.ready = false;
        c.transactions += 1;
        c.in_flight = Some(entry);
        if self.messages[&msg].data.is_none() {
            // The driver keeps the body: the transaction begins when it hands it back.
            c.loading = true;
            self.set_deadline(conn, None);
            let waiting = self.loading.entry(msg).or_default();
            waiting.push(conn);
            if waiting.len() == 1 {
                self.actions.push_back(Action::LoadMessage { message: msg });
            }
            return true;
        }
        self.begin_transaction(now, conn);
        true
    }

    /// Starts the transaction of the recipients `conn` carries, whose message data is here.
    fn begin_transaction(&mut self, now: Time, conn: ConnectionId) {
        let Some(c) = self.connections.get(&conn) else {
            return;
        };
        let q = c.queue;
        let Some(entry) = c.in_flight.clone() else {
            return;
        };
        let data = self.message_data(now, q, entry.msg);
        let message = &self.messages[&entry.msg];
        let transaction = Transaction {
            mail_from: message.mail_from.to_string(),
            recipients: entry
                .rcpts
                .iter()
                .map(|i| message.recipients[*i as usize].to_string())
                .collect(),
            // RFC 1870's estimate: the data as sent, less the `.\r\n` terminator.
            size: (data.len() as u64).saturating_sub(3),
            data,
            eight_bit: message.eight_bit,
        };
        let c = self.connections.get_mut(&conn).expect("checked above");
        c.loading = false;
        c.session.start_transaction(transaction);
        self.events.push_back(EngineEvent::TransactionStarted {
            at: now,
            conn,
            recipients: entry.rcpts.len() as u64,
        });
        self.pump(now, conn);
    }

    /// The message as sent by this queue: DKIM-signed when the queue signs, dot-stuffed. Made
    /// for each attempt from the kept message and, after the first, its kept signature.
    fn message_data(&mut self, now: Time, q: QueueId, msg: MessageId) -> Arc<Vec<u8>> {
        let queue = &self.queues[q.0 as usize];
        let message = &self.messages[&msg];
        let data = message
            .data
            .as_ref()
            .expect("a transaction begins once its message's data is here");
        if let Some((_, header)) = message.signed.iter().find(|(by, _)| *by == q) {
            return Arc::new(data.dot_stuffed(header.as_bytes()));
        }
        let sign = match queue.settings.dkim_sign {
            DkimSign::Yes => true,
            DkimSign::IfXDkimOptionsPresent => message.has_x_dkim_options,
            DkimSign::No => false,
        };
        let signer = sign
            .then(|| self.signer.for_domain(&message.from_domain))
            .flatten();
        let Some(signer) = signer else {
            return Arc::new(data.dot_stuffed(b""));
        };
        let mut options = SignOptions::from_settings(
            &queue.settings.dkim_headers_canon,
            &queue.settings.dkim_body_canon,
            queue.settings.dkim_headers.as_deref(),
        );
        options.identity = queue.settings.dkim_identity.clone();
        let signed = if data.shared.bytes.is_empty() {
            signer.sign(
                &crate::auth::to_crlf(&data.to_vec()),
                now.unix_secs(),
                &options,
            )
        } else {
            // The own part is the header block (`with_shared_body`): only it is canonicalized
            // per message; the shared body's hash is kept with the body.
            signer.sign_head(
                &crate::auth::to_crlf(data.head()),
                data.shared.body_hash(options.body_canon),
                now.unix_secs(),
                &options,
            )
        };
        match signed {
            Ok(header) => {
                let stuffed = data.dot_stuffed(header.as_bytes());
                if let Some(message) = self.messages.get_mut(&msg) {
                    message.signed.push((q, header.into_boxed_str()));
                }
                Arc::new(stuffed)
            }
            Err(_) => Arc::new(data.dot_stuffed(b"")),
        }
    }

    /// Keeps a ready connection open for new mail, up to `connection-idle-timeout`.
    fn park(&mut self, now: Time, conn: ConnectionId) {
        let Some(c) = self.connections.get_mut(&conn) else {
            return;
        };
        let q = c.queue;
        let idle_s = self.queues[q.0 as usize].settings.connection_idle_timeout_s;
        if idle_s == 0 {
            self.quit(now, conn);
            return;
        }
        c.ready = true;
        self.queues[q.0 as usize].idle.push(conn);
        self.set_deadline(conn, Some(now.plus_secs(idle_s)));
    }

    /// Keeps `conn` ready while the shared store answers a permit request (the answer, or
    /// `Unavailable` after the request timeout, schedules the queue again); it quits after
    /// its idle timeout, or after a probe interval when that is zero.
    fn wait_for_store(&mut self, now: Time, conn: ConnectionId) {
        let Some(c) = self.connections.get_mut(&conn) else {
            return;
        };
        let q = c.queue;
        c.ready = true;
        self.queues[q.0 as usize].idle.push(conn);
        let idle_ms = (self.queues[q.0 as usize].settings.connection_idle_timeout_s * 1000)
            .max(shared::PROBE_INTERVAL_MS);
        self.set_deadline(conn, Some(now.plus_ms(idle_ms)));
    }

    fn quit(&mut self, now: Time, conn: ConnectionId) {
        let Some(c) = self.connections.get_mut(&conn) else {
            return;
        };
        if c.state == ConnState::Quitting {
            return;
        }
        c.state = ConnState::Quitting;
        c.ready = false;
        c.session.quit();
        let q = c.queue;
        self.queues[q.0 as usize].idle.retain(|i| *i != conn);
        let timeout = self.queues[q.0 as usize].settings.smtp_greeting_timeout_s;
        self.set_deadline(conn, Some(now.plus_secs(timeout)));
        self.pump(now, conn);
    }

    /// Moves session output to actions and reacts to session events.
    fn pump(&mut self, now: Time, conn: ConnectionId) {
        loop {
            let Some(c) = self.connections.get_mut(&conn) else {
                return;
            };
            if let Some(bytes) = c.session.take_output() {
                self.actions.push_back(Action::Write { conn, bytes });
            }
            let Some(c) = self.connections.get_mut(&conn) else {
                return;
            };
            let Some(event) = c.session.poll_event() else {
                break;
            };
            self.on_session_event(now, conn, event);
        }
        self.arm_session_deadline(now, conn);
    }

    fn arm_session_deadline(&mut self, now: Time, conn: ConnectionId) {
        let Some(c) = self.connections.get(&conn) else {
            return;
        };
        if c.ready {
            return; // parked: the idle deadline stands
        }
        let settings = &self.queues[c.queue.0 as usize].settings;
        let timeout_s = match c.session.awaiting() {
            Awaiting::Nothing => return,
            Awaiting::Greeting | Awaiting::Tls => settings.smtp_greeting_timeout_s,
            Awaiting::Reply(Phase::Data) => settings.data_send_timeout_s,
            Awaiting::Reply(Phase::DataEnd) => settings.smtp_data_termination_timeout_s,
            Awaiting::Reply(_) => settings.smtp_greeting_timeout_s,
        };
        let at = now.plus_secs(timeout_s);
        if c.deadline != Some(at) {
            self.set_deadline(conn, Some(at));
        }
    }

    fn on_session_event(&mut self, now: Time, conn: ConnectionId, event: SessionEvent) {
        let q = self.connections[&conn].queue;
        match event {
            SessionEvent::Ready => {
                // Ready again after the RSET that followed a 421 is not a new connection.
                if self.connections[&conn].transactions == 0 {
                    let queue = &mut self.queues[q.0 as usize];
                    queue.opening = queue.opening.saturating_sub(1);
                }
                self.feed(now, conn);
            }
            SessionEvent::StartTls => {
                let server_name = {
                    let c = &self.connections[&conn];
                    c.targets[c.target].host.clone()
                };
                self.actions
                    .push_back(Action::StartTls { conn, server_name });
            }
            SessionEvent::TransactionDone(replies) => {
                let entry = self
                    .connections
                    .get_mut(&conn)
                    .and_then(|c| c.in_flight.take())
                    .expect("a transaction was in flight");
                let keep_going = self.settle_transaction(now, conn, &entry, &replies);
                let resetting = self
                    .connections
                    .get(&conn)
                    .is_some_and(|c| c.session.is_resetting());
                if !keep_going {
                    self.quit(now, conn);
                } else if !resetting {
                    self.feed(now, conn);
                }
                self.dirty.insert(q);
            }
            SessionEvent::Failed { phase, reason } => {
                let (reply, text) = match reason {
                    FailureReason::Reply(reply) => {
                        let text = reply.one_line();
                        (Some(reply), text)
                    }
                    FailureReason::TlsRequired => {
                        (None, "STARTTLS required but not available".to_string())
                    }
                    FailureReason::Protocol(text) => (None, text),
                };
                self.connection_failed(now, conn, reply, &text, reply_phase(phase));
            }
            SessionEvent::Finished => {
                self.drop_connection(now, conn);
                self.actions.push_back(Action::Close { conn });
            }
        }
    }

    /// Applies a transaction's per-recipient replies. Returns whether the connection may
    /// carry on.
    fn settle_transaction(
        &mut self,
        now: Time,
        conn: ConnectionId,
        entry: &Entry,
        replies: &[(Phase, Reply)],
    ) -> bool {
        let q = self.connections[&conn].queue;
        let mut keep_going = true;
        for (rcpt, (phase, reply)) in entry.rcpts.iter().zip(replies) {
            let phase = reply_phase(*phase);
            let disposition = Disposition::of(reply);
            if disposition != Disposition::Delivered {
                if let Some(c) = self.connections.get_mut(&conn) {
                    c.errors += 1;
                }
                keep_going &= self.apply_patterns(now, q, conn, reply, phase);
            }
            let one = Entry {
                msg: entry.msg,
                rcpts: vec![*rcpt],
            };
            match disposition {
                Disposition::Delivered => {
                    self.settle_entry(
                        now,
                        q,
                        &one,
                        reply,
                        Some(conn),
                        RecordType::Delivered,
                        phase,
                    );
                    let queue = &mut self.queues[q.0 as usize];
                    queue.retry_index = 0;
                    if queue.mode == QueueMode::Backoff
                        && queue.settings.backoff_to_normal_after_delivery
                    {
                        self.set_mode(
                            now,
                            q,
                            QueueMode::Normal,
                            ModeTrigger::DeliveryInBackoff,
                            None,
                        );
                    }
                }
                Disposition::Permanent => {
                    self.settle_entry(now, q, &one, reply, Some(conn), RecordType::Bounced, phase);
                }
                Disposition::Transient => {
                    self.defer_recipients(now, q, &one, reply, Some(conn), phase);
                }
            }
        }
        keep_going
    }

    fn set_state(&mut self, entry: &Entry, state: RcptState) {
        if let Some(message) = self.messages.get_mut(&entry.msg) {
            for rcpt in &entry.rcpts {
                message.rcpt_state[*rcpt as usize] = state;
            }
        }
    }

    /// Records `t` for each recipient and makes it wait `retry-recipients-after`; one past
    /// `bounce-after` bounces instead.
    fn defer_recipients(
        &mut self,
        now: Time,
        q: QueueId,
        entry: &Entry,
        reply: &Reply,
        conn: Option<ConnectionId>,
        phase: Option<ReplyPhase>,
    ) {
        for rcpt in &entry.rcpts {
            self.record(
                now,
                q,
                entry.msg,
                Some(*rcpt),
                reply,
                conn,
                RecordType::Transient,
                phase,
            );
        }
        if self.is_expired(now, q, entry.msg) {
            self.settle_entry(
                now,
                q,
                entry,
                &expired_reply(),
                None,
                RecordType::Bounced,
                None,
            );
            return;
        }
        self.set_state(entry, RcptState::Waiting);
        let queue = &mut self.queues[q.0 as usize];
        let until = now.plus_secs(queue.settings.retry_recipients_after_s);
        self.timer_seq += 1;
        queue.waiting.insert((until, self.timer_seq), entry.clone());
        self.wake_queue(q, until);
    }

    /// Writes the final record for recipients (`d` or `b`) and forgets them.
    #[allow(clippy::too_many_arguments)]
    fn settle_entry(
        &mut self,
        now: Time,
        q: QueueId,
        entry: &Entry,
        reply: &Reply,
        conn: Option<ConnectionId>,
        kind: RecordType,
        phase: Option<ReplyPhase>,
    ) {
        let outcome = match kind {
            RecordType::Bounced => Settled::Bounced,
            _ => Settled::Delivered,
        };
        for rcpt in &entry.rcpts {
            self.record(now, q, entry.msg, Some(*rcpt), reply, conn, kind, phase);
            if self.messages.contains_key(&entry.msg) {
                self.events.push_back(EngineEvent::RecipientSettled {
                    at: now,
                    message: entry.msg,
                    recipient: *rcpt,
                    outcome,
                });
            }
        }
        self.set_state(entry, RcptState::Done);
        let queue = &mut self.queues[q.0 as usize];
        queue.queued_rcpts = queue.queued_rcpts.saturating_sub(entry.rcpts.len());
        let done = match self.messages.get_mut(&entry.msg) {
            Some(message) => {
                message.open = message.open.saturating_sub(entry.rcpts.len());
                message.open == 0
            }
            None => false,
        };
        if done {
            // The message's signatures go with it.
            self.messages.remove(&entry.msg);
        }
    }

    /// Runs the queue's `<smtp-pattern-list>` on a negative reply. Returns false if the
    /// connection should stop (a bounced queue or a disabled source IP). `mode=backoff`
    /// does not stop it: backoff slows the queue to its `backoff-*` limits, and the
    /// connection goes on within them (reference §2.3: "It slows the queue down; it does not
    /// stop it").
    fn apply_patterns(
        &mut self,
        now: Time,
        q: QueueId,
        conn: ConnectionId,
        reply: &Reply,
        phase: Option<ReplyPhase>,
    ) -> bool {
        let Some(list_name) = self.queues[q.0 as usize].settings.smtp_pattern_list.clone() else {
            return true;
        };
        let Some(list) = self.config.smtp_pattern_lists.get(&list_name) else {
            return true;
        };
        let mut failures = Vec::new();
        let matched = classify::matching_rule(list, reply, &mut failures)
            .map(|rule| (rule.actions.clone(), rule.pattern.source.clone()));
        self.report_failures(now, Some(q), || reply.one_line(), failures);
        let Some((actions, source)) = matched else {
            return true;
        };
        let trigger = ModeTrigger::Pattern {
            pattern: source,
            reply: reply.one_line(),
        };
        let pattern_leave = actions.iter().find_map(|a| match a {
            PatternAction::BackoffToNormalAfter(i) => Some(i.map(|i| i.seconds)),
            _ => None,
        });
        let reenable = actions.iter().find_map(|a| match a {
            PatternAction::ReenableAfter(i) => Some(i.map(|i| i.seconds)),
            _ => None,
        });
        let mut keep_going = true;
        for action in &actions {
            match action {
                PatternAction::Mode(mode) => {
                    self.set_mode(now, q, *mode, trigger.clone(), pattern_leave);
                }
                PatternAction::BounceQueue => {
                    self.bounce_queue(now, q, reply, phase);
                    keep_going = false;
                }
                PatternAction::DisableSourceIp => {
                    let ip = self.connections[&conn].source_ip;
                    let seconds = reenable.unwrap_or(
                        self.queues[q.0 as usize]
                            .settings
                            .reenable_source_ip_after_s,
                    );
                    let until = seconds.map(|s| now.plus_secs(s));
                    let queue = &mut self.queues[q.0 as usize];
                    queue.disabled_ips.insert(ip, until);
                    self.events.push_back(EngineEvent::SourceIpDisabled {
                        at: now,
                        queue: queue.name.clone(),
                        domain: queue.domain.clone(),
                        vmta: queue.vmta.clone(),
                        ip,
                        until,
                    });
                    if let Some(until) = until {
                        self.wake_queue(q, until);
                    }
                    keep_going = false;
                }
                PatternAction::BackoffToNormalAfter(_) | PatternAction::ReenableAfter(_) => {}
            }
        }
        keep_going
    }

    fn set_mode(
        &mut self,
        now: Time,
        q: QueueId,
        mode: QueueMode,
        trigger: ModeTrigger,
        pattern_leave: Option<Option<u64>>,
    ) {
        let clock = self.backoff_clock;
        let queue = &mut self.queues[q.0 as usize];
        if mode == QueueMode::Backoff {
            // The clock starts at the switch into backoff (or, with `BackoffClock::LastMatch`,
            // at every match); the pattern's own value wins over the domain's.
            if queue.mode != QueueMode::Backoff || clock == BackoffClock::LastMatch {
                let leave_s = pattern_leave.unwrap_or(queue.settings.backoff_to_normal_after_s);
                queue.backoff_leave_at = leave_s.map(|s| now.plus_secs(s));
                if let Some(at) = queue.backoff_leave_at {
                    self.wake_queue(q, at);
                }
            }
        } else {
            queue.backoff_leave_at = None;
        }
        let queue = &mut self.queues[q.0 as usize];
        if queue.mode == mode {
            return;
        }
        queue.mode = mode;
        queue.retry_index = 0;
        let shared = self
            .shared
            .as_ref()
            .is_some_and(|node| node.state == SharedState::Shared);
        if shared && mode == QueueMode::Backoff && trigger != ModeTrigger::SharedStore {
            // The other nodes follow; without backoff-to-normal-after, for an hour.
            let until = queue
                .backoff_leave_at
                .unwrap_or(now.plus_secs(SHARED_BACKOFF_DEFAULT_S));
            self.actions.push_back(Action::Permits {
                queue: queue.name.clone(),
                request: PermitRequest::Backoff { until },
            });
        }
        self.events.push_back(EngineEvent::ModeChanged {
            at: now,
            queue: queue.name.clone(),
            domain: queue.domain.clone(),
            vmta: queue.vmta.clone(),
            mode,
            trigger,
        });
        self.dirty.insert(q);
        if mode == QueueMode::Backoff {
            self.reroute_on_backoff(q);
        }
    }

    /// Puts the queue into retry mode for its next retry interval.
    fn enter_retry(&mut self, now: Time, q: QueueId) {
        let wait = self.queues[q.0 as usize].retry_interval_s();
        self.queues[q.0 as usize].retry_index += 1;
        self.hold_until(now, q, now.plus_secs(wait));
    }

    fn bounce_queue(&mut self, now: Time, q: QueueId, reply: &Reply, phase: Option<ReplyPhase>) {
        let queue = &mut self.queues[q.0 as usize];
        let mut drained: Vec<Entry> = queue.ready.drain(..).collect();
        drained.extend(std::mem::take(&mut queue.waiting).into_values());
        let entries: Vec<Entry> = drained.iter().map(|e| self.live(e)).collect();
        let bounced = Reply::new(
            reply.code.max(500),
            reply.enhanced.map(|[_, b, c]| [5, b, c]),
            reply.text.clone(),
        );
        for entry in entries.iter().filter(|e| !e.rcpts.is_empty()) {
            self.settle_entry(now, q, entry, &bounced, None, RecordType::Bounced, phase);
        }
    }

    /// A connection could not be used: requeue what it carried, mark its MX host down for
    /// the queue's current retry interval, and try the next live host, or put the queue into
    /// retry mode when none is left.
    fn connection_failed(
        &mut self,
        now: Time,
        conn: ConnectionId,
        reply: Option<Reply>,
        text: &str,
        phase: Option<ReplyPhase>,
    ) {
        let Some(c) = self.connections.get(&conn) else {
            return;
        };
        let q = c.queue;
        if c.ready && c.in_flight.is_none() {
            // A parked connection the remote closed (its own idle timeout): nothing failed.
            self.drop_connection(now, conn);
            self.actions.push_back(Action::Close { conn });
            return;
        }
        if reply.is_none()
            && c.transactions > 1
            && c.session.awaiting() == Awaiting::Reply(Phase::Mail)
            && let Some(entry) = c.in_flight.clone()
        {
            // A reused connection the remote ended before answering MAIL (Yahoo closes after
            // its per-connection quota, without a word): the message was never tried, so it
            // goes back to the front of the queue and a new connection takes it.
            self.set_state(&entry, RcptState::Waiting);
            self.queues[q.0 as usize].ready.push_front(entry);
            if let Some(c) = self.connections.get_mut(&conn) {
                c.in_flight = None;
            }
            self.drop_connection(now, conn);
            self.actions.push_back(Action::Close { conn });
            return;
        }
        let in_flight = c.in_flight.clone();
        let carried = in_flight.is_some();
        let source_ip = c.source_ip;
        let host_ip = c.targets[c.target].ip;
        let was_quitting = c.state == ConnState::Quitting;
        let awaiting_data_end = c.session.awaiting() == Awaiting::Reply(Phase::DataEnd);
        let negative = reply
            .clone()
            .unwrap_or_else(|| Reply::new(451, Some([4, 4, 1]), text));
        if reply.is_some() {
            self.apply_patterns(now, q, conn, &negative, phase);
        }
        let settings = self.queues[q.0 as usize].settings.clone();
        // PowerMTA's bounce-upon-5xx-greeting is about the greeting alone: a 5xx to EHLO,
        // HELO or STARTTLS is a failed attempt like any other.
        let greeting_bounce = phase == Some(ReplyPhase::Greeting)
            && negative.class() == 5
            && settings.bounce_upon_5xx_greeting;
        // The next MX host still believed up, if any.
        let next = if was_quitting || greeting_bounce {
            None
        } else {
            // Remember the dead host, as real MTAs do, instead of trying it first again on
            // every new connection: skipped until the queue's current retry interval has
            // passed (or, once the queue is waiting to retry, until that retry).
            let queue = &mut self.queues[q.0 as usize];
            let down_until = match queue.retry_until {
                Some(until) if until > now => until,
                _ => now.plus_secs(queue.retry_interval_s()),
            };
            queue.mx_down.insert(host_ip, down_until);
            self.live_target(now, q).ok()
        };
        // Lost while the message data was in transit: the remote may or may not have it.
        let in_transfer = reply.is_none() && awaiting_data_end;
        if let Some(entry) = in_flight {
            if in_transfer && settings.bounce_upon_transfer_failure {
                self.settle_entry(
                    now,
                    q,
                    &entry,
                    &negative,
                    Some(conn),
                    RecordType::Bounced,
                    phase,
                );
            } else if next.is_some() {
                // The next MX takes them at once (PowerMTA: "attempt a new connection to
                // the next MX record"); the reply is still a transient one for each.
                for rcpt in &entry.rcpts {
                    self.record(
                        now,
                        q,
                        entry.msg,
                        Some(*rcpt),
                        &negative,
                        Some(conn),
                        RecordType::Transient,
                        phase,
                    );
                }
                self.set_state(&entry, RcptState::Waiting);
                self.queues[q.0 as usize].ready.push_front(entry);
            } else {
                self.defer_recipients(now, q, &entry, &negative, Some(conn), phase);
            }
        }
        self.drop_connection(now, conn);
        self.actions.push_back(Action::Close { conn });
        if was_quitting {
            return;
        }
        if greeting_bounce {
            self.bounce_queue(now, q, &negative, phase);
            return;
        }
        if let Some(next) = next {
            // Another host is up: no retry mode. Try it right away if the queue's limits
            // allow (this attempt is not over yet); otherwise the scheduler will.
            self.queue_record_for(now, q, source_ip, &negative, phase);
            let queue = &self.queues[q.0 as usize];
            // With shared throttles the scheduler opens it, once the store grants a permit.
            let may_open = self.shared.is_none()
                && !queue.ready.is_empty()
                && !queue.disabled_ips.contains_key(&source_ip)
                && queue.retry_until.is_none_or(|t| t <= now)
                && (queue.connections.len() as u64) < queue.max_smtp_out()
                && self
                    .globals
                    .total_max_smtp_out
                    .is_none_or(|max| (self.total_connections as u64) < max);
            if may_open {
                self.open(now, q, source_ip, next);
            }
            return;
        }
        if self.queues[q.0 as usize].retry_until.is_none() {
            self.queue_record_for(now, q, source_ip, &negative, phase);
            self.enter_retry(now, q);
        } else if reply.is_some() && !carried {
            // Already waiting to retry, but a server's own answer on a connection opened
            // earlier is news (it may have changed the queue's mode): log it.
            self.queue_record_for(now, q, source_ip, &negative, phase);
        }
    }

    fn connection_timeout(&mut self, now: Time, conn: ConnectionId) {
        let Some(c) = self.connections.get(&conn) else {
            return;
        };
        if c.ready {
            // The idle timeout: nothing came for this connection.
            self.quit(now, conn);
            return;
        }
        if c.state == ConnState::Quitting || (c.session.is_resetting() && c.in_flight.is_none()) {
            // Gone quiet after QUIT, or after the 421 that announced the close: over.
            self.drop_connection(now, conn);
            self.actions.push_back(Action::Close { conn });
            return;
        }
        let what = match (c.state, c.session.awaiting()) {
            (ConnState::Connecting, _) => "connect timeout",
            (_, Awaiting::Greeting) => "timeout waiting for the greeting",
            (_, Awaiting::Reply(Phase::DataEnd)) => "timeout waiting for the reply to end of data",
            (_, Awaiting::Reply(Phase::Data)) => "timeout waiting for the reply to DATA",
            _ => "timeout waiting for a reply",
        };
        let phase = failure_phase(c);
        let q = c.queue;
        if c.session.awaiting() == Awaiting::Reply(Phase::DataEnd)
            && self.queues[q.0 as usize]
                .settings
                .assume_delivery_upon_data_termination_timeout
            && let Some(entry) = self
                .connections
                .get_mut(&conn)
                .and_then(|c| c.in_flight.take())
        {
            // The data was sent; PowerMTA can be told to count silence as acceptance.
            let assumed = Reply::new(
                250,
                Some([2, 0, 0]),
                "assumed delivered (no reply to end of data)",
            );
            self.settle_entry(
                now,
                q,
                &entry,
                &assumed,
                Some(conn),
                RecordType::Delivered,
                Some(ReplyPhase::DataEnd),
            );
            self.drop_connection(now, conn);
            self.actions.push_back(Action::Close { conn });
            return;
        }
        self.connection_failed(now, conn, None, what, phase);
    }

    fn drop_connection(&mut self, now: Time, conn: ConnectionId) {
        let Some(c) = self.connections.remove(&conn) else {
            return;
        };
        self.events.push_back(EngineEvent::ConnectionClosed {
            at: now,
            conn,
            messages: c.transactions,
        });
        self.total_connections = self.total_connections.saturating_sub(1);
        let shared = self
            .shared
            .as_ref()
            .is_some_and(|node| node.state == SharedState::Shared);
        let queue = &mut self.queues[c.queue.0 as usize];
        queue.connections.remove(&conn);
        let holding = queue.connections.len() as u64;
        if shared && queue.permits.connections > holding {
            // The permit goes back to the other nodes.
            queue.permits.connections = holding;
            self.actions.push_back(Action::Permits {
                queue: queue.name.clone(),
                request: PermitRequest::Holding { holding },
            });
        }
        if let Some(per_ip) = queue.per_ip.get_mut(&c.source_ip) {
            per_ip.connections = per_ip.connections.saturating_sub(1);
        }
        queue.idle.retain(|i| *i != conn);
        if c.state != ConnState::Quitting
            && !c.ready
            && c.transactions == 0
            && c.in_flight.is_none()
        {
            queue.opening = queue.opening.saturating_sub(1);
        }
        self.dirty.insert(c.queue);
        // A slot freed under total-max-smtp-out may let another queue open.
        if self.globals.total_max_smtp_out.is_some() {
            for (index, other) in self.queues.iter().enumerate() {
                if !other.ready.is_empty() {
                    self.dirty.insert(QueueId(index as u32));
                }
            }
        }
    }

    /// Reports patterns that could not be evaluated, each the first time it fails.
    fn report_failures(
        &mut self,
        now: Time,
        q: Option<QueueId>,
        subject: impl Fn() -> String,
        failures: Vec<classify::PatternFailure>,
    ) {
        for failure in failures {
            if !self.failed_patterns.insert((failure.origin, failure.span)) {
                continue;
            }
            let position =
                self.classifier
                    .rule_position(&self.config, failure.origin, failure.span);
            let context = match q {
                Some(q) => format!("queue {}", self.queues[q.0 as usize].name),
                None => "routing".to_string(),
            };
            self.events.push_back(EngineEvent::PatternFailed {
                at: now,
                context,
                position,
                pattern: failure.pattern,
                subject: subject(),
                error: failure.error,
            });
        }
    }

    // --- accounting --------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        now: Time,
        q: QueueId,
        msg: MessageId,
        rcpt: Option<u32>,
        reply: &Reply,
        conn: Option<ConnectionId>,
        kind: RecordType,
        phase: Option<ReplyPhase>,
    ) {
        let settings = &self.queues[q.0 as usize].settings;
        if !self.messages.contains_key(&msg)
            || settings
                .disable_acct_records
                .iter()
                .any(|t| t == kind.code())
        {
            return;
        }
        let category = match kind {
            RecordType::Delivered => String::new(),
            _ => {
                let classified = self
                    .classifier
                    .classify_for_queue(reply, settings.smtp_553_means_invalid_mailbox);
                self.report_failures(now, Some(q), || reply.one_line(), classified.failures);
                classified.category
            }
        };
        let queue = &self.queues[q.0 as usize];
        let message = &self.messages[&msg];
        let (source_ip, destination_ip, dsn_mta, esmtp) =
            match conn.and_then(|c| self.connections.get(&c)) {
                Some(c) => {
                    let target = &c.targets[c.target];
                    (
                        c.source_ip.to_string(),
                        target.ip.to_string(),
                        target.host.clone(),
                        c.session.capabilities().keywords.join(","),
                    )
                }
                None => Default::default(),
            };
        self.records.push_back(AcctRecord {
            record_type: kind,
            time_logged: now,
            time_queued: message.queued_at,
            orig: message.mail_from.to_string(),
            rcpt: rcpt
                .map(|i| message.recipients[i as usize].to_string())
                .unwrap_or_default(),
            orcpt: String::new(),
            dsn_status: reply.status(),
            dsn_diag: format!("smtp;{}", reply.one_line()),
            dsn_mta,
            bounce_category: category,
            src_type: message.src_type.to_string(),
            src_mta: message.src_mta.map(|ip| ip.to_string()).unwrap_or_default(),
            dlv_type: queue.settings.delivery_type.name().to_string(),
            dlv_source_ip: source_ip,
            dlv_destination_ip: destination_ip,
            dlv_esmtp_available: esmtp,
            dlv_size: message.size,
            vmta: queue.vmta.clone(),
            job_id: message.job_id.to_string(),
            env_id: message.env_id.to_string(),
            queue: queue.name.clone(),
            vmta_pool: queue.pool.clone(),
            phase,
        });
    }

    /// A `tq` record: the queue as a whole could not deliver (DNS, connection, greeting).
    fn queue_record(
        &mut self,
        now: Time,
        q: QueueId,
        source_ip: Option<IpAddr>,
        diag: &str,
        status: &str,
        phase: Option<ReplyPhase>,
    ) {
        let queue = &self.queues[q.0 as usize];
        if queue
            .settings
            .disable_acct_records
            .iter()
            .any(|t| t == "tq")
        {
            return;
        }
        self.records.push_back(AcctRecord {
            record_type: RecordType::TransientQueue,
            time_logged: now,
            time_queued: now,
            orig: String::new(),
            rcpt: String::new(),
            orcpt: String::new(),
            dsn_status: status.to_string(),
            dsn_diag: diag.to_string(),
            dsn_mta: queue.domain.clone(),
            bounce_category: String::new(),
            src_type: String::new(),
            src_mta: String::new(),
            dlv_type: "smtp".to_string(),
            dlv_source_ip: source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            dlv_destination_ip: String::new(),
            dlv_esmtp_available: String::new(),
            dlv_size: 0,
            vmta: queue.vmta.clone(),
            job_id: String::new(),
            env_id: String::new(),
            queue: queue.name.clone(),
            vmta_pool: queue.pool.clone(),
            phase,
        });
    }

    fn queue_record_for(
        &mut self,
        now: Time,
        q: QueueId,
        source_ip: IpAddr,
        reply: &Reply,
        phase: Option<ReplyPhase>,
    ) {
        let classified = self.classifier.classify(reply);
        self.report_failures(now, Some(q), || reply.one_line(), classified.failures);
        let category = classified.category;
        let before = self.records.len();
        self.queue_record(
            now,
            q,
            Some(source_ip),
            &format!("smtp;{}", reply.one_line()),
            &reply.status(),
            phase,
        );
        if self.records.len() > before
            && let Some(last) = self.records.back_mut()
        {
            last.bounce_category = category;
        }
    }
}

/// The accounting phase of a session phase (`None` for QUIT, which settles nothing).
fn reply_phase(phase: Phase) -> Option<ReplyPhase> {
    Some(match phase {
        Phase::Greeting => ReplyPhase::Greeting,
        Phase::Ehlo | Phase::Helo => ReplyPhase::Ehlo,
        Phase::StartTls => ReplyPhase::StartTls,
        Phase::Mail => ReplyPhase::Mail,
        Phase::Rcpt => ReplyPhase::Rcpt,
        Phase::Data => ReplyPhase::Data,
        Phase::DataEnd => ReplyPhase::DataEnd,
        Phase::Rset => ReplyPhase::Rset,
        Phase::Quit => return None,
    })
}

/// Where a connection was when it failed without a reply.
fn failure_phase(c: &Connection) -> Option<ReplyPhase> {
    if c.state == ConnState::Connecting {
        return Some(ReplyPhase::Connect);
    }
    match c.session.awaiting() {
        Awaiting::Greeting => Some(ReplyPhase::Greeting),
        Awaiting::Tls => Some(ReplyPhase::StartTls),
        Awaiting::Reply(phase) => reply_phase(phase),
        Awaiting::Nothing => None,
    }
}

/// The bounce of a recipient older than `bounce-after` (PowerMTA's category
/// `message-expired`, from the 4.4.7 status).
fn expired_reply() -> Reply {
    Reply::new(554, Some([5, 4, 7]), "delivery expired (message too old)")
}

/// `smtp-hosts [192.0.2.1]:2525, [192.0.2.2]`: fixed targets, in order. `None` when the
/// list names hosts that need DNS (or is `lookup-mx:`).
fn parse_smtp_hosts(text: &str) -> Option<Vec<Target>> {
    let mut targets = Vec::new();
    for item in text
        .split([',', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let rest = item.strip_prefix('[')?;
        let (ip, after) = rest.split_once(']')?;
        let ip: IpAddr = ip.parse().ok()?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => 25,
            None => return None,
        };
        targets.push(Target {
            host: format!("[{ip}]"),
            ip,
            port,
        });
    }
    (!targets.is_empty()).then_some(targets)
}
