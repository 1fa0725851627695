//! The simulated store of shared throttles: what Redis keeps for `shared-throttles` in live
//! mode, for the engine nodes of one simulated run.
//!
//! Owns, per queue name (the same on every node): the recipients granted under each message
//! rate in a sliding window (`rate::Window`, the engine's own limiter, so "no window of S
//! seconds holds more than N" is kept exactly across nodes), the connections each node
//! holds, and the time the queue's shared backoff mode ends. A `store_down` fault makes it
//! unreachable for a while: every request is then answered `Unavailable`, and what it held
//! is still there when it comes back (a network partition, not a restart).
//!
//! Must not: read a clock or know the engine's scheduler (it answers requests, in the order
//! the nodes ask, at the `now` they ask).

use std::collections::BTreeMap;

use crate::config::value::Rate;
use crate::engine::shared::{PermitAnswer, PermitRequest};
use crate::rate::Window;
use crate::time::Time;

#[derive(Debug, Default)]
pub struct SharedStore {
    /// Recipients granted, per (queue, window of the rate in seconds).
    rates: BTreeMap<(String, u64), Window>,
    /// Connections held, per queue and node.
    connections: BTreeMap<String, BTreeMap<u16, u64>>,
    /// When each queue's shared backoff mode ends.
    backoff: BTreeMap<String, Time>,
    /// When the store is unreachable: `[from, to)` intervals.
    down: Vec<(Time, Time)>,
}

impl SharedStore {
    /// A store unreachable during each of `down`'s `[from, to)` intervals.
    pub fn new(down: Vec<(Time, Time)>) -> SharedStore {
        SharedStore {
            down,
            ..SharedStore::default()
        }
    }

    pub fn is_down(&self, now: Time) -> bool {
        self.down.iter().any(|(from, to)| *from <= now && now < *to)
    }

    /// Node `node`'s `request` for `queue` at `now`: the answer, or `None` for requests that
    /// need none.
    pub fn answer(
        &mut self,
        now: Time,
        node: u16,
        queue: &str,
        request: &PermitRequest,
    ) -> Option<PermitAnswer> {
        if self.is_down(now) {
            return match request {
                PermitRequest::Messages { .. } | PermitRequest::Connection { .. } => {
                    Some(PermitAnswer::Unavailable)
                }
                PermitRequest::Holding { .. } | PermitRequest::Backoff { .. } => None,
            };
        }
        let backoff_until = self.backoff.get(queue).copied().filter(|t| *t > now);
        match *request {
            PermitRequest::Messages { n, rate } => {
                let (granted, retry_at) = match rate {
                    Rate::Unlimited => (n, None),
                    Rate::Limit { per_seconds, .. } => {
                        let window = self
                            .rates
                            .entry((queue.to_string(), per_seconds))
                            .or_insert_with(|| Window::new(per_seconds * 1000));
                        let granted = window.allowance(rate, now).min(n);
                        window.record(now, granted);
                        let retry_at = (granted < n)
                            .then(|| window.next_allowed(rate, now))
                            .flatten();
                        (granted, retry_at)
                    }
                };
                Some(PermitAnswer::Granted {
                    granted,
                    retry_at,
                    backoff_until,
                })
            }
            PermitRequest::Connection { holding, max } => {
                let held = self.connections.entry(queue.to_string()).or_default();
                let others: u64 = held
                    .iter()
                    .filter(|(other, _)| **other != node)
                    .map(|(_, n)| n)
                    .sum();
                let granted = u64::from(others + holding < max);
                held.insert(node, holding + granted);
                Some(PermitAnswer::Granted {
                    granted,
                    retry_at: None,
                    backoff_until,
                })
            }
            PermitRequest::Holding { holding } => {
                self.connections
                    .entry(queue.to_string())
                    .or_default()
                    .insert(node, holding);
                None
            }
            PermitRequest::Backoff { until } => {
                let end = self.backoff.entry(queue.to_string()).or_insert(until);
                *end = (*end).max(until);
                None
            }
        }
    }
}
