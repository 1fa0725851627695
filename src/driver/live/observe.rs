//! What a live daemon has done, for its operators: traffic per minute and hour, each
//! queue's backoff reason and last errors, and the Prometheus counters and gauges.
//!
//! Owns the tallies the engine does not keep (it keeps queues, not history). Fed the
//! engine's accounting records and events by the live sink; read by the management API.
//! Must not decide anything or hold unbounded history: every list here has a limit.

use std::collections::{BTreeMap, VecDeque};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::model::QueueMode;
use crate::engine::accounting::{AcctRecord, RecordType};
use crate::engine::control::QueueStatus;
use crate::engine::{EngineEvent, ModeTrigger};
use crate::time::Time;

/// Last errors kept per queue (PowerMTA's `max-events-recorded` default is 10).
pub const LAST_ERRORS_MAX: usize = 10;
/// Minutes of traffic kept: one hour.
const MINUTES_KEPT: usize = 60;
/// Queues whose notes are kept; beyond it the oldest notes go (the engine's queues stay).
const QUEUE_NOTES_MAX: usize = 100_000;

/// One failure an operator sees in `show queues` and the queue's JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastError {
    pub at: Time,
    /// `t`, `tq` or `b`.
    pub record_type: &'static str,
    pub rcpt: String,
    pub dsn_status: String,
    pub diag: String,
}

/// Why the queue is in backoff mode: the pattern and the reply, as the engine reported.
#[derive(Clone, Debug, Default)]
pub struct QueueNotes {
    pub backoff_reason: Option<String>,
    pub last_errors: VecDeque<LastError>,
}

/// Messages in and recipients out in one minute.
#[derive(Clone, Copy, Debug, Default)]
struct Minute {
    index: u64,
    messages_in: u64,
    recipients_in: u64,
    delivered: u64,
    bounced: u64,
    deferred: u64,
}

/// Traffic over the last minute and the last hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub messages_in: u64,
    pub recipients_in: u64,
    pub delivered: u64,
    pub bounced: u64,
    pub deferred: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    provider: String,
    queue: String,
    vmta: String,
    /// The enhanced status class: 2, 4 or 5.
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    provider: String,
    queue: String,
    vmta: String,
}

/// The daemon's Prometheus metrics (names in docs/grafana-dashboard.json).
struct Metrics {
    registry: Registry,
    recipients: Family<OutcomeLabels, Counter>,
    messages_in: Counter,
    queue_recipients: Family<QueueLabels, Gauge>,
    queue_oldest_age: Family<QueueLabels, Gauge>,
    queue_connections: Family<QueueLabels, Gauge>,
    queue_backoff: Family<QueueLabels, Gauge>,
    queue_paused: Family<QueueLabels, Gauge>,
    connections_out: Gauge,
    connections_in: Gauge,
    spool_messages: Gauge,
    spool_bytes: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pmta_sim");
        let recipients = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "recipients",
            "Recipients settled or deferred, by outcome (delivered, deferred, bounced), provider (the queue's domain), queue, virtual MTA and enhanced status class",
            recipients.clone(),
        );
        let messages_in = Counter::default();
        registry.register(
            "messages_received",
            "Messages accepted by the SMTP listener and spooled",
            messages_in.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<QueueLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let queue_recipients = gauge(
            &mut registry,
            "queue_recipients",
            "Recipients waiting in the queue",
        );
        let queue_oldest_age = gauge(
            &mut registry,
            "queue_oldest_age_seconds",
            "Age of the oldest recipient waiting in the queue",
        );
        let queue_connections = gauge(
            &mut registry,
            "queue_connections",
            "Outbound connections of the queue",
        );
        let queue_backoff = gauge(
            &mut registry,
            "queue_backoff",
            "1 while the queue is in backoff mode",
        );
        let queue_paused = gauge(
            &mut registry,
            "queue_paused",
            "1 while an operator has the queue paused",
        );
        let connections_out = Gauge::default();
        registry.register(
            "connections_out",
            "Outbound SMTP connections open",
            connections_out.clone(),
        );
        let connections_in = Gauge::default();
        registry.register(
            "connections_in",
            "Inbound SMTP sessions open",
            connections_in.clone(),
        );
        let spool_messages = Gauge::default();
        registry.register(
            "spool_messages",
            "Messages in the spool",
            spool_messages.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Bytes of the messages in the spool",
            spool_bytes.clone(),
        );
        Metrics {
            registry,
            recipients,
            messages_in,
            queue_recipients,
            queue_oldest_age,
            queue_connections,
            queue_backoff,
            queue_paused,
            connections_out,
            connections_in,
            spool_messages,
            spool_bytes,
        }
    }
}

/// The live daemon's tallies.
pub struct Observer {
    minutes: VecDeque<Minute>,
    notes: BTreeMap<String, QueueNotes>,
    metrics: Metrics,
}

impl Default for Observer {
    fn default() -> Observer {
        Observer {
            minutes: VecDeque::new(),
            notes: BTreeMap::new(),
            metrics: Metrics::new(),
        }
    }
}

/// What the daemon holds now, for the gauges.
pub struct Gauges<'a> {
    pub now: Time,
    pub queues: &'a [QueueStatus],
    pub connections_out: usize,
    pub connections_in: usize,
    pub spool_messages: usize,
    pub spool_bytes: u64,
}

impl Observer {
    /// A message the listener accepted.
    pub fn received(&mut self, now: Time, recipients: usize) {
        let minute = self.minute(now);
        minute.messages_in += 1;
        minute.recipients_in += recipients as u64;
        self.metrics.messages_in.inc();
    }

    pub fn record(&mut self, record: &AcctRecord) {
        let (outcome, code) = match record.record_type {
            RecordType::Delivered => ("delivered", "d"),
            RecordType::Bounced => ("bounced", "b"),
            RecordType::Transient => ("deferred", "t"),
            RecordType::TransientQueue => ("deferred", "tq"),
            RecordType::Feedback => return,
        };
        let minute = self.minute(record.time_logged);
        match outcome {
            "delivered" => minute.delivered += 1,
            "bounced" => minute.bounced += 1,
            _ => minute.deferred += 1,
        }
        let provider = record
            .queue
            .split_once('/')
            .map_or(record.queue.as_str(), |(domain, _)| domain)
            .to_string();
        let class = record.dsn_status.chars().next().unwrap_or('4').to_string();
        self.metrics
            .recipients
            .get_or_create(&OutcomeLabels {
                outcome,
                provider,
                queue: record.queue.clone(),
                vmta: record.vmta.clone(),
                class,
            })
            .inc();
        if record.record_type != RecordType::Delivered {
            let errors = &mut self.notes_for(&record.queue).last_errors;
            if errors.len() == LAST_ERRORS_MAX {
                errors.pop_front();
            }
            errors.push_back(LastError {
                at: record.time_logged,
                record_type: code,
                rcpt: record.rcpt.clone(),
                dsn_status: record.dsn_status.clone(),
                diag: record.dsn_diag.clone(),
            });
        }
    }

    pub fn event(&mut self, event: &EngineEvent) {
        if let EngineEvent::ModeChanged {
            queue,
            mode,
            trigger,
            ..
        } = event
        {
            let reason = match (mode, trigger) {
                (QueueMode::Normal, _) => None,
                (QueueMode::Backoff, ModeTrigger::Pattern { pattern, reply }) => {
                    Some(format!("pattern /{pattern}/ matched: {reply}"))
                }
                (QueueMode::Backoff, other) => Some(other.to_string()),
            };
            self.notes_for(queue).backoff_reason = reason;
        }
    }

    /// The queue's notes, if anything was noted.
    pub fn notes(&self, queue: &str) -> Option<&QueueNotes> {
        self.notes.get(queue)
    }

    /// Traffic over the last minute and the last 60 minutes, at `now`.
    pub fn traffic(&self, now: Time) -> (Traffic, Traffic) {
        let current = now.ms / 60_000;
        let mut minute = Traffic::default();
        let mut hour = Traffic::default();
        for m in &self.minutes {
            let age = current.saturating_sub(m.index);
            let add = |t: &mut Traffic| {
                t.messages_in += m.messages_in;
                t.recipients_in += m.recipients_in;
                t.delivered += m.delivered;
                t.bounced += m.bounced;
                t.deferred += m.deferred;
            };
            if age == 0 {
                add(&mut minute);
            }
            if age < MINUTES_KEPT as u64 {
                add(&mut hour);
            }
        }
        (minute, hour)
    }

    /// The metrics in Prometheus' text format, gauges set from `gauges`.
    pub fn metrics_text(&self, gauges: &Gauges<'_>) -> String {
        let m = &self.metrics;
        for q in gauges.queues {
            let labels = QueueLabels {
                provider: q.domain.clone(),
                queue: q.name.clone(),
                vmta: q.vmta.clone(),
            };
            let age_s = q
                .oldest_queued_at
                .map_or(0, |at| gauges.now.since(at) / 1000);
            m.queue_recipients
                .get_or_create(&labels)
                .set(q.recipients_queued as i64);
            m.queue_oldest_age.get_or_create(&labels).set(age_s as i64);
            m.queue_connections
                .get_or_create(&labels)
                .set(q.connections as i64);
            m.queue_backoff
                .get_or_create(&labels)
                .set(i64::from(q.mode == QueueMode::Backoff));
            m.queue_paused
                .get_or_create(&labels)
                .set(i64::from(q.paused));
        }
        m.connections_out.set(gauges.connections_out as i64);
        m.connections_in.set(gauges.connections_in as i64);
        m.spool_messages.set(gauges.spool_messages as i64);
        m.spool_bytes
            .set(i64::try_from(gauges.spool_bytes).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &m.registry);
        text
    }

    fn minute(&mut self, now: Time) -> &mut Minute {
        let index = now.ms / 60_000;
        if self.minutes.back().is_none_or(|m| m.index < index) {
            if self.minutes.len() == MINUTES_KEPT {
                self.minutes.pop_front();
            }
            self.minutes.push_back(Minute {
                index,
                ..Minute::default()
            });
        }
        // The clock never goes back (the live clock is monotonic), so the last is current.
        let last = self.minutes.len() - 1;
        &mut self.minutes[last]
    }

    fn notes_for(&mut self, queue: &str) -> &mut QueueNotes {
        if !self.notes.contains_key(queue) && self.notes.len() >= QUEUE_NOTES_MAX {
            self.notes.pop_first();
        }
        self.notes.entry(queue.to_string()).or_default()
    }
}
