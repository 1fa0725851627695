//! Operator control of a running engine: the inputs behind PowerMTA's `pmta set queue`,
//! `pause`/`resume`, `schedule`, `delete` and `reload`, and the queue view an operator reads.
//!
//! Owns what an operator may change and how each change reaches the queues. It must not
//! read a clock or do I/O (the driver passes `now` in, as for every input), and must not
//! bypass the scheduler: every change marks the queue dirty and lets `schedule` decide.

use std::net::IpAddr;

use thiserror::Error;

use super::{Engine, Entry, ModeTrigger, QueueId, QueueMode, QueueSettings, RecordType, Reply};
use crate::auth::DkimError;
use crate::config::model::Config;
use crate::config::queue;
use crate::time::Time;

/// What an operator asks of the engine. Queue names are PowerMTA's `DOMAIN/VMTA`; a target
/// without `/` (or `DOMAIN/*`) means every queue of the domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// `set queue --mode=normal|backoff`.
    SetMode { target: String, mode: QueueMode },
    /// `pause queue`: no new transaction; transactions in flight finish.
    Pause { target: String },
    /// `resume queue`.
    Resume { target: String },
    /// `schedule`: leave retry mode now and retry every waiting recipient.
    RetryNow { target: String },
    /// `delete --queue`: bounce every waiting recipient (each gets a `b` record).
    Delete { target: String },
}

/// What a control input did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlOutcome {
    /// The queues it applied to.
    pub queues: Vec<String>,
    /// Recipients bounced (`Delete`).
    pub recipients_deleted: usize,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("no queue matches `{0}` (queues are DOMAIN/VMTA; see `show queues`)")]
    NoSuchQueue(String),
}

/// A queue as an operator sees it: what [`Engine::queue_snapshots`] gives, plus what holds
/// it back and whether it is paused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStatus {
    pub name: String,
    pub domain: String,
    pub vmta: String,
    pub mode: QueueMode,
    pub paused: bool,
    /// What the scheduler found holding the queue back (`HeldBy::name`).
    pub held_by: &'static str,
    pub recipients_queued: usize,
    pub connections: usize,
    /// Retry mode: no new connection before this.
    pub retry_until: Option<Time>,
    /// When backoff mode ends on its own (`backoff-to-normal-after`).
    pub backoff_until: Option<Time>,
    /// Source IPs disabled by a pattern, and until when (`None`: until a reload).
    pub disabled_source_ips: Vec<(IpAddr, Option<Time>)>,
    /// When the oldest recipient still waiting was queued.
    pub oldest_queued_at: Option<Time>,
    pub settings: QueueSettings,
}

impl Engine {
    /// Carries out an operator's request.
    pub fn handle_control(
        &mut self,
        now: Time,
        control: &Control,
    ) -> Result<ControlOutcome, ControlError> {
        self.advance(now);
        let target = match control {
            Control::SetMode { target, .. }
            | Control::Pause { target }
            | Control::Resume { target }
            | Control::RetryNow { target }
            | Control::Delete { target } => target,
        };
        let queues = self.matching(target);
        // Pausing a domain holds its queues made later too; any other request needs a queue.
        if queues.is_empty() && !matches!(control, Control::Pause { .. } | Control::Resume { .. }) {
            return Err(ControlError::NoSuchQueue(target.clone()));
        }
        let mut deleted = 0;
        match control {
            Control::SetMode { mode, .. } => {
                for &q in &queues {
                    self.set_mode(now, q, *mode, ModeTrigger::Operator, None);
                }
            }
            Control::Pause { target } => {
                let key = pause_key(target);
                if queues.is_empty() && key.contains('/') {
                    return Err(ControlError::NoSuchQueue(target.clone()));
                }
                self.paused.insert(key);
            }
            Control::Resume { target } => {
                if !self.paused.remove(&pause_key(target)) && queues.is_empty() {
                    return Err(ControlError::NoSuchQueue(target.clone()));
                }
            }
            Control::RetryNow { .. } => {
                for &q in &queues {
                    let queue = &mut self.queues[q.0 as usize];
                    queue.retry_until = None;
                    queue.mx_down.clear();
                    let waiting = std::mem::take(&mut queue.waiting);
                    queue.ready.extend(waiting.into_values());
                }
            }
            Control::Delete { .. } => {
                let reply = Reply::new(
                    550,
                    Some([5, 0, 0]),
                    "message deleted from the queue by the operator",
                );
                for &q in &queues {
                    let queue = &mut self.queues[q.0 as usize];
                    let mut drained: Vec<Entry> = queue.ready.drain(..).collect();
                    drained.extend(std::mem::take(&mut queue.waiting).into_values());
                    let entries: Vec<Entry> = drained.iter().map(|e| self.live(e)).collect();
                    for entry in entries.iter().filter(|e| !e.rcpts.is_empty()) {
                        deleted += entry.rcpts.len();
                        self.settle_entry(now, q, entry, &reply, None, RecordType::Bounced, None);
                    }
                }
            }
        }
        self.dirty.extend(queues.iter().copied());
        self.run(now);
        Ok(ControlOutcome {
            queues: queues
                .iter()
                .map(|q| self.queues[q.0 as usize].name.clone())
                .collect(),
            recipients_deleted: deleted,
        })
    }

    /// Takes a new configuration without losing a message: every queue keeps its mail,
    /// mode, retry state and counters, and reads its settings again from `config`. The
    /// routing of mail injected from now on follows `config`.
    pub fn reload(&mut self, now: Time, config: Config) -> Result<(), DkimError> {
        self.advance(now);
        let signer = super::Signer::from_config(&config, 0)?;
        let mut settings = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            settings.push(
                match queue::explain(&config, &format!("{}/{}", q.domain, q.vmta)) {
                    Ok(view) => QueueSettings::from_view(&view),
                    // A virtual MTA the new configuration lacks: the queue drains as before.
                    Err(_) => q.settings.clone(),
                },
            );
        }
        self.classifier = super::Classifier::new(&config);
        self.globals = super::GlobalSettings::read(&config.globals, None);
        self.signer = signer;
        self.config = config;
        self.routes.clear();
        for (i, (queue, settings)) in self.queues.iter_mut().zip(settings).enumerate() {
            queue.settings = settings;
            self.dirty.insert(QueueId(i as u32));
        }
        self.run(now);
        Ok(())
    }

    /// Every queue, as an operator sees it, in the order they were made.
    pub fn queue_status(&self) -> Vec<QueueStatus> {
        (0..self.queues.len())
            .map(|i| {
                let q = &self.queues[i];
                let oldest = q
                    .ready
                    .iter()
                    .chain(q.waiting.values())
                    .filter_map(|e| self.messages.get(&e.msg).map(|m| m.queued_at))
                    .min();
                QueueStatus {
                    name: q.name.clone(),
                    domain: q.domain.clone(),
                    vmta: q.vmta.clone(),
                    mode: q.mode,
                    paused: self.is_paused(QueueId(i as u32)),
                    held_by: q.held.name(),
                    recipients_queued: q.queued_rcpts,
                    connections: q.connections.len(),
                    retry_until: q.retry_until,
                    backoff_until: q.backoff_leave_at,
                    disabled_source_ips: q.disabled_ips.iter().map(|(ip, t)| (*ip, *t)).collect(),
                    oldest_queued_at: oldest,
                    settings: q.settings.clone(),
                }
            })
            .collect()
    }

    /// Whether an operator paused the queue or its domain.
    pub(super) fn is_paused(&self, q: QueueId) -> bool {
        if self.paused.is_empty() {
            return false;
        }
        let queue = &self.queues[q.0 as usize];
        self.paused.contains(&queue.name) || self.paused.contains(&queue.domain)
    }

    fn matching(&self, target: &str) -> Vec<QueueId> {
        let (domain, vmta) = match target.split_once('/') {
            Some((d, "*")) | Some((d, "")) => (d, None),
            Some((d, v)) => (d, Some(v)),
            None => (target, None),
        };
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| {
                q.name == target
                    || (q.domain.eq_ignore_ascii_case(domain)
                        && vmta.is_none_or(|v| q.vmta.eq_ignore_ascii_case(v)))
            })
            .map(|(i, _)| QueueId(i as u32))
            .collect()
    }
}

/// What is kept paused: the queue's name, or the bare domain for `DOMAIN` and `DOMAIN/*`.
fn pause_key(target: &str) -> String {
    match target.split_once('/') {
        Some((domain, "*")) | Some((domain, "")) => domain.to_ascii_lowercase(),
        Some(_) => target.to_string(),
        None => target.to_ascii_lowercase(),
    }
}
