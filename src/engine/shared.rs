//! Throttles shared by several nodes (`shared-throttles`): what the engine asks a shared
//! store for, what the store answers, and the node's state.
//!
//! Owns the closed vocabulary between the engine and whatever keeps the shared counters
//! (Redis in live mode, `sim::shared::SharedStore` in a simulated run): permits for
//! `max-msg-rate` (recipients, taken the moment they are granted) and `max-smtp-out`
//! (connections, held until closed), and a queue's backoff mode. While the store cannot be
//! reached, a node keeps its share of each limit (the limit divided by
//! `shared-throttles-nodes`, at least 1).
//!
//! Why the quiet window: a node that loses the store does not know what the other nodes
//! sent in the current window, and a node that finds it again does not know what the others
//! sent on their shares. So on every change of state a node sends nothing on a queue for
//! one window of its rate: windows before the change hold only what the old state allowed,
//! windows after it only what the new one allows, and no window holds both. Each node also
//! asks the store (a probe) before it sends on its share, so no node sends on its share once
//! the store answers again.
//!
//! Must not: do I/O, read a clock, or decide anything the scheduler decides (the engine
//! reads these states in `open_connections` and `feed`).

use crate::config::value::Rate;
use crate::time::Time;

/// How long a node waits before asking the store again after it was unreachable (one probe
/// per queue per interval), or after the store refused a connection (it is not told when
/// another node closes one).
pub const PROBE_INTERVAL_MS: u64 = 1_000;

/// What the engine asks the shared store for one queue (`DOMAIN/VMTA`, the same name on
/// every node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermitRequest {
    /// Up to `n` recipients under the queue's message rate `rate` (its limit in the queue's
    /// mode, counted across every node). `n = 0` only asks whether the store is there.
    Messages { n: u64, rate: Rate },
    /// One connection more than the `holding` this node has, if every node together holds
    /// fewer than `max`.
    Connection { holding: u64, max: u64 },
    /// This node now holds `holding` connections of the queue (after a close, or on
    /// finding the store again). Needs no answer.
    Holding { holding: u64 },
    /// The queue went into backoff mode until `until`: the other nodes follow it. Needs no
    /// answer.
    Backoff { until: Time },
}

/// The store's answer to a [`PermitRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermitAnswer {
    Granted {
        /// Recipients (for `Messages`) or connections (0 or 1, for `Connection`) granted.
        granted: u64,
        /// When fewer than asked were granted: when to ask again.
        retry_at: Option<Time>,
        /// Another node put the queue into backoff mode until then.
        backoff_until: Option<Time>,
    },
    /// The store could not be reached: the node keeps its share of each limit.
    Unavailable,
}

/// Whether a node's limits are shared or its own share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedState {
    /// Counters in the shared store.
    Shared,
    /// The store is unreachable: each limit divided by the node count.
    Fallback,
}

impl SharedState {
    pub fn name(self) -> &'static str {
        match self {
            SharedState::Shared => "shared",
            SharedState::Fallback => "fallback",
        }
    }
}

/// The node's side of the shared throttles.
#[derive(Clone, Debug)]
pub(crate) struct SharedNode {
    /// `shared-throttles-nodes`: what each node's share divides by.
    pub nodes: u64,
    pub state: SharedState,
    /// When the state last changed (none at start: there is nothing to be quiet about).
    pub changed_at: Option<Time>,
}

/// One queue's permits on this node.
#[derive(Clone, Debug, Default)]
pub(crate) struct QueuePermits {
    /// Recipients granted at `tokens_at`, usable only at that instant: the store counted
    /// them then, so sending them later could put them in a window it did not.
    pub tokens: u64,
    pub tokens_at: Time,
    pub asking_messages: bool,
    pub asking_connection: bool,
    /// Connections this node holds permits for.
    pub connections: u64,
    /// The store's "not before" for the next request of each kind.
    pub messages_retry_at: Option<Time>,
    pub connection_retry_at: Option<Time>,
}

/// `rate` divided among `nodes` (at least one message per window).
pub fn share_rate(rate: Rate, nodes: u64) -> Rate {
    match rate {
        Rate::Unlimited => Rate::Unlimited,
        Rate::Limit { count, per_seconds } => Rate::Limit {
            count: (count / nodes.max(1)).max(1),
            per_seconds,
        },
    }
}

/// `max` connections divided among `nodes` (at least one).
pub fn share_count(max: u64, nodes: u64) -> u64 {
    (max / nodes.max(1)).max(1)
}
