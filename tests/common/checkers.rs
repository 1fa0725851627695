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
/// first, so a limit holds at `at` if it holds under either mode. `changes` is the queue's
/// mode changes in time order.
fn modes_at(changes: &[(Time, QueueMode)], at: Time) -> [QueueMode; 2] {
    let before = changes.partition_point(|(t, _)| *t < at);
    let upto = changes.partition_point(|(t, _)| *t <= at);
    let mode = |n: usize| n.checked_sub(1).map_or(QueueMode::Normal, |i| changes[i].1);
    [mode(before), mode(upto)]
}

/// Every queue's mode changes, in time order.
fn mode_changes<'a>(h: &'a RunView<'_>) -> BTreeMap<&'a str, Vec<(Time, QueueMode)>> {
    let mut changes: BTreeMap<&str, Vec<(Time, QueueMode)>> = BTreeMap::new();
    for event in h.events {
        if let EngineEvent::ModeChanged {
            at, queue, mode, ..
        } = event
        {
            changes
                .entry(queue.as_str())
                .or_default()
                .push((*at, *mode));
        }
    }
    changes
}

/// Whether `n` events in the window ending at `at` fit the rate `rate_of(mode)` of either
/// mode at that instant.
fn rate_holds(
    changes: &[(Time, QueueMode)],
    at: Time,
    times: &[Time],
    rate_of: impl Fn(QueueMode) -> Rate,
) -> Result<(), String> {
    let mut failure = None;
    for mode in modes_at(changes, at) {
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

/// How many of the sorted `times` fall in the `per_seconds` window ending at `at`.
fn count_in_window(times: &[Time], at: Time, per_seconds: u64) -> usize {
    let upto = times.partition_point(|t| *t <= at);
    let too_old = times.partition_point(|t| *t <= at && at.since(*t) >= per_seconds * 1000);
    upto - too_old
}

/// For each connection (as `opened`, `closed` pairs), how many were open at its opening
/// instant, itself included: a sweep in time order.
fn open_at_each_opening(conns: &[(Time, Option<Time>)]) -> Vec<(Time, u64)> {
    let mut order: Vec<usize> = (0..conns.len()).collect();
    order.sort_by_key(|&i| conns[i].0);
    // Close times, soonest first; a connection still open at the end (`None`) sorts last.
    let mut open: std::collections::BinaryHeap<std::cmp::Reverse<(bool, Option<Time>)>> =
        std::collections::BinaryHeap::new();
    let mut next = 0;
    let mut out = Vec::with_capacity(conns.len());
    for &i in &order {
        let at = conns[i].0;
        while next < order.len() && conns[order[next]].0 <= at {
            let end = conns[order[next]].1;
            open.push(std::cmp::Reverse((end.is_none(), end)));
            next += 1;
        }
        while let Some(std::cmp::Reverse((false, Some(end)))) = open.peek() {
            if *end > at {
                break;
            }
            open.pop();
        }
        out.push((at, open.len() as u64));
    }
    out
}

pub fn limits_hold(h: &RunView<'_>) {
    let changes = mode_changes(h);
    for snapshot in &h.queues {
        let s = &snapshot.settings;
        let name = &snapshot.name;
        let changes = changes.get(name.as_str()).map_or(&[][..], |c| &c[..]);
        let conns: Vec<_> = h.conns.iter().filter(|c| &c.queue == name).collect();
        // Connections: at each open, count those open at that instant.
        let spans: Vec<_> = conns.iter().map(|c| (c.opened, c.closed)).collect();
        for (opened, open) in open_at_each_opening(&spans) {
            let limit = modes_at(changes, opened)
                .map(|mode| match mode {
                    QueueMode::Normal => s.max_smtp_out,
                    QueueMode::Backoff => s.backoff_max_smtp_out,
                })
                .into_iter()
                .max()
                .unwrap_or(0);
            assert!(
                open <= limit,
                "{name}: {open} connections open at {opened:?}, limit {limit}"
            );
        }
        // Per source IP: connections and attempted recipients within `source-ip-*`.
        let mut by_ip: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for c in &conns {
            by_ip.entry(c.source_ip).or_default().push(*c);
        }
        for (ip, ip_conns) in &by_ip {
            if let Some(limit) = s.source_ip_max_smtp_out.get(*ip) {
                let spans: Vec<_> = ip_conns.iter().map(|c| (c.opened, c.closed)).collect();
                for (opened, open) in open_at_each_opening(&spans) {
                    assert!(
                        open <= limit,
                        "{name}: {open} connections from {ip} at {opened:?}, limit {limit}"
                    );
                }
            }
            if let Some(Rate::Limit { count, per_seconds }) = s.source_ip_max_msg_rate.get(*ip) {
                let mut times: Vec<Time> = ip_conns
                    .iter()
                    .flat_map(|o| o.rcpt_times.iter().copied())
                    .collect();
                times.sort();
                for t in &times {
                    let n = count_in_window(&times, *t, per_seconds) as u64;
                    assert!(
                        n <= count,
                        "{name}: {n} recipients from {ip} in {per_seconds}s, limit {count}"
                    );
                }
            }
        }
        let rcpts = h.rcpt_times(name);
        for t in &rcpts {
            let held = rate_holds(changes, *t, &rcpts, |mode| match mode {
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
            let held = rate_holds(changes, *t, &opens, |mode| match mode {
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
                    ModeTrigger::Operator => {
                        panic!("{queue} returned to normal by an operator in a run without one")
                    }
                    ModeTrigger::SharedStore => {
                        panic!(
                            "{queue} returned to normal through the shared store, which only shares entering backoff"
                        )
                    }
                }
            }
        }
    }
}

/// The most recipients attempted from `source_ip` in any window of `per_seconds` (ending at
/// each RCPT), over every connection of every queue and every node of the run: what a
/// provider counting that IP would see.
pub fn peak_per_source_ip(h: &RunView<'_>, source_ip: IpAddr, per_seconds: u64) -> u64 {
    let mut times: Vec<Time> = h
        .conns
        .iter()
        .filter(|c| c.source_ip == source_ip)
        .flat_map(|c| c.rcpt_times.iter().copied())
        .collect();
    times.sort();
    times
        .iter()
        .map(|t| count_in_window(&times, *t, per_seconds) as u64)
        .max()
        .unwrap_or(0)
}

/// The most connections from `source_ip` open at once, over every queue and node.
pub fn peak_connections_per_source_ip(h: &RunView<'_>, source_ip: IpAddr) -> u64 {
    let spans: Vec<_> = h
        .conns
        .iter()
        .filter(|c| c.source_ip == source_ip)
        .map(|c| (c.opened, c.closed))
        .collect();
    open_at_each_opening(&spans)
        .into_iter()
        .map(|(_, open)| open)
        .max()
        .unwrap_or(0)
}
