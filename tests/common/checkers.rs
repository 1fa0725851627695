//! Whole-run checkers: properties every run must have, whatever the scenario.
//!
//! - every injected recipient ends in exactly one `d` or `b` record, or is still queued;
//! - no configured limit is exceeded in any window (connections, attempted recipients per
//!   `max-msg-rate` window, connects per `max-connect-rate` window, rampup spacing), each
//!   judged against the limit in force for the queue's mode at that moment;
//! - backoff enters only on a reply that matched a `mode=backoff` pattern, and leaves only
//!   as configured.

use std::collections::BTreeMap;

use std::net::IpAddr;

use pmta_sim::config::model::QueueMode;
use pmta_sim::config::value::Rate;
use pmta_sim::engine::accounting::{AcctRecord, RecordType};
use pmta_sim::engine::{EngineEvent, ModeTrigger, QueueSnapshot, Time};
use pmta_sim::sim::output::RunOutput;

use super::harness::Harness;

/// One connection, from the engine's side.
pub struct ConnView {
    pub queue: String,
    pub source_ip: IpAddr,
    pub opened: Time,
    pub closed: Option<Time>,
    pub rcpt_times: Vec<Time>,
}

/// What the checkers need of a run, whichever driver produced it.
pub struct RunView<'a> {
    pub records: &'a [AcctRecord],
    pub events: &'a [EngineEvent],
    pub injected: &'a [(String, String)],
    pub pending: usize,
    pub queues: Vec<QueueSnapshot>,
    pub conns: Vec<ConnView>,
}

impl<'a> RunView<'a> {
    pub fn of_harness(h: &'a Harness) -> RunView<'a> {
        RunView {
            records: &h.records,
            events: &h.events,
            injected: &h.injected,
            pending: h.engine().recipients_pending(),
            queues: h.engine().queue_snapshots(),
            conns: h
                .conns
                .values()
                .map(|c| ConnView {
                    queue: c.queue.clone(),
                    source_ip: c.source_ip,
                    opened: c.opened,
                    closed: c.closed,
                    rcpt_times: c
                        .commands
                        .iter()
                        .filter(|(_, l)| l.starts_with("RCPT"))
                        .map(|(t, _)| *t)
                        .collect(),
                })
                .collect(),
        }
    }

    pub fn of_run(out: &'a RunOutput) -> RunView<'a> {
        RunView {
            records: &out.records,
            events: &out.events,
            injected: &out.injected,
            pending: out.pending,
            queues: out.queues.clone(),
            conns: out
                .connections
                .iter()
                .map(|c| ConnView {
                    queue: c.queue.clone(),
                    source_ip: c.source_ip,
                    opened: c.opened,
                    closed: c.closed,
                    rcpt_times: c.rcpt_times.clone(),
                })
                .collect(),
        }
    }

    fn rcpt_times(&self, queue: &str) -> Vec<Time> {
        let mut times: Vec<Time> = self
            .conns
            .iter()
            .filter(|c| c.queue == queue)
            .flat_map(|c| c.rcpt_times.iter().copied())
            .collect();
        times.sort();
        times
    }
}

pub fn check_all(h: &Harness) {
    check_run(&RunView::of_harness(h));
}

pub fn check_run(view: &RunView<'_>) {
    each_recipient_settles_once(view);
    limits_hold(view);
    backoff_is_explained(view);
}

pub fn each_recipient_settles_once(h: &RunView<'_>) {
    let mut finals: BTreeMap<(String, String), usize> = BTreeMap::new();
    for record in h.records {
        if matches!(
            record.record_type,
            RecordType::Delivered | RecordType::Bounced
        ) {
            *finals
                .entry((record.job_id.clone(), record.rcpt.clone()))
                .or_default() += 1;
        }
    }
    let mut unsettled = 0;
    for key in h.injected {
        match finals.get(key).copied().unwrap_or(0) {
            0 => unsettled += 1,
            1 => {}
            n => panic!("{key:?} has {n} final records"),
        }
    }
    assert_eq!(
        finals.values().sum::<usize>() + unsettled,
        h.injected.len(),
        "a final record for a recipient that was never injected"
    );
    assert_eq!(
        unsettled, h.pending,
        "recipients without a final record must still be queued"
    );
}

/// The queue's modes at `at`: before and after any change at that very instant. Within one
/// instant the driver may hand the engine a reply that writes a command on one connection
/// before another connection's reply changes the mode, and the trace cannot tell which came
/// first, so a limit holds at `at` if it holds under either mode.
fn modes_at(h: &RunView<'_>, queue: &str, at: Time) -> [QueueMode; 2] {
    let mut before = QueueMode::Normal;
    let mut after = QueueMode::Normal;
    for event in h.events {
        if let EngineEvent::ModeChanged {
            at: t,
            queue: q,
            mode: m,
            ..
        } = event
            && q == queue
            && *t <= at
        {
            if *t < at {
                before = *m;
            }
            after = *m;
        }
    }
    [before, after]
}

/// Whether `n` events in the window ending at `at` fit the rate `rate_of(mode)` of either
/// mode at that instant.
fn rate_holds(
    h: &RunView<'_>,
    queue: &str,
    at: Time,
    times: &[Time],
    rate_of: impl Fn(QueueMode) -> Rate,
) -> Result<(), String> {
    let mut failure = None;
    for mode in modes_at(h, queue, at) {
        if let Rate::Limit { count, per_seconds } = rate_of(mode) {
            let n = count_in_window(times, at, per_seconds) as u64;
            if n > count {
                failure = Some(format!(
                    "{n} in the {per_seconds}s window ending {at:?}, limit {count}"
                ));
                continue;
            }
        }
        return Ok(());
    }
    Err(failure.unwrap_or_default())
}

fn count_in_window(times: &[Time], at: Time, per_seconds: u64) -> usize {
    times
        .iter()
        .filter(|t| **t <= at && at.since(**t) < per_seconds * 1000)
        .count()
}

pub fn limits_hold(h: &RunView<'_>) {
    for snapshot in &h.queues {
        let s = &snapshot.settings;
        let name = &snapshot.name;
        let conns: Vec<_> = h.conns.iter().filter(|c| &c.queue == name).collect();
        // Connections: at each open, count those open at that instant.
        for c in &conns {
            let open = conns
                .iter()
                .filter(|o| o.opened <= c.opened && o.closed.is_none_or(|end| end > c.opened))
                .count() as u64;
            let limit = modes_at(h, name, c.opened)
                .map(|mode| match mode {
                    QueueMode::Normal => s.max_smtp_out,
                    QueueMode::Backoff => s.backoff_max_smtp_out,
                })
                .into_iter()
                .max()
                .unwrap_or(0);
            assert!(
                open <= limit,
                "{name}: {open} connections open at {:?}, limit {limit}",
                c.opened
            );
        }
        // Per source IP: connections and attempted recipients within `source-ip-*`.
        for c in &conns {
            if let Some(limit) = s.source_ip_max_smtp_out.get(c.source_ip) {
                let open = conns
                    .iter()
                    .filter(|o| {
                        o.source_ip == c.source_ip
                            && o.opened <= c.opened
                            && o.closed.is_none_or(|end| end > c.opened)
                    })
                    .count() as u64;
                assert!(
                    open <= limit,
                    "{name}: {open} connections from {} at {:?}, limit {limit}",
                    c.source_ip,
                    c.opened
                );
            }
            if let Some(Rate::Limit { count, per_seconds }) =
                s.source_ip_max_msg_rate.get(c.source_ip)
            {
                let mut times: Vec<Time> = conns
                    .iter()
                    .filter(|o| o.source_ip == c.source_ip)
                    .flat_map(|o| o.rcpt_times.iter().copied())
                    .collect();
                times.sort();
                for t in &times {
                    let n = count_in_window(&times, *t, per_seconds) as u64;
                    assert!(
                        n <= count,
                        "{name}: {n} recipients from {} in {per_seconds}s, limit {count}",
                        c.source_ip
                    );
                }
            }
        }
        let rcpts = h.rcpt_times(name);
        for t in &rcpts {
            let held = rate_holds(h, name, *t, &rcpts, |mode| match mode {
                QueueMode::Normal => s.max_msg_rate,
                QueueMode::Backoff => s.backoff_max_msg_rate,
            });
            assert!(
                held.is_ok(),
                "{name}: recipients attempted: {}",
                held.unwrap_err()
            );
        }
        let mut opens: Vec<Time> = conns.iter().map(|c| c.opened).collect();
        opens.sort();
        for t in &opens {
            let held = rate_holds(h, name, *t, &opens, |mode| match mode {
                QueueMode::Normal => s.max_connect_rate,
                QueueMode::Backoff => s.backoff_max_connect_rate,
            });
            assert!(held.is_ok(), "{name}: connects: {}", held.unwrap_err());
        }
        for pair in opens.windows(2) {
            assert!(
                pair[1].since(pair[0]) >= s.smtp_out_rampup_interval_s * 1000,
                "{name}: connections {:?} and {:?} closer than smtp-out-rampup-interval",
                pair[0],
                pair[1]
            );
        }
    }
}

pub fn backoff_is_explained(h: &RunView<'_>) {
    let mut entered: BTreeMap<String, Time> = BTreeMap::new();
    for event in h.events {
        let EngineEvent::ModeChanged {
            at,
            queue,
            mode,
            trigger,
            ..
        } = event
        else {
            continue;
        };
        match mode {
            QueueMode::Backoff => {
                match trigger {
                    ModeTrigger::Pattern { .. } => {
                        let matched = h.records.iter().any(|r| {
                            &r.queue == queue
                                && r.time_logged == *at
                                && r.dsn_status.starts_with(['4', '5'])
                        });
                        assert!(
                            matched,
                            "{queue} entered backoff at {at:?} without a negative reply then: {trigger}"
                        );
                    }
                    other => assert_eq!(*other, ModeTrigger::AllSourceIpsDisabled),
                }
                entered.insert(queue.clone(), *at);
            }
            QueueMode::Normal => {
                let since = entered
                    .remove(queue)
                    .expect("left backoff without entering it");
                let settings = &h.queues.iter().find(|s| &s.name == queue).unwrap().settings;
                match trigger {
                    ModeTrigger::DeliveryInBackoff => {
                        assert!(settings.backoff_to_normal_after_delivery);
                        assert!(h.records.iter().any(|r| &r.queue == queue
                            && r.time_logged == *at
                            && r.record_type == RecordType::Delivered));
                    }
                    ModeTrigger::BackoffToNormalAfter => assert!(*at > since),
                    ModeTrigger::Pattern { .. } => {}
                    ModeTrigger::AllSourceIpsDisabled => {
                        panic!("{queue} returned to normal because all source IPs were disabled")
                    }
                }
            }
        }
    }
}
