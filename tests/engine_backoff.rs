//! Backoff mode and the other `<smtp-pattern-list>` actions, as PowerMTA has them.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::checkers::check_all;
use common::harness::{Harness, Script, T0, secs};
use pmta_sim::config::model::QueueMode;
use pmta_sim::engine::accounting::RecordType;
use pmta_sim::engine::{EngineEvent, Time};
use pmta_sim::smtp::Reply;

fn config(extra_domain: &str) -> String {
    format!(
        "
<virtual-mta vmta1>
    smtp-source-host 192.0.2.1 mta1.sender.example
    smtp-source-host 192.0.2.2 mta2.sender.example
</virtual-mta>
<smtp-pattern-list errs>
    reply /421 .* try again later/ mode=backoff
    reply /\\[TS01\\]/ mode=backoff backoff-to-normal-after=30m
    reply /mailbox disabled for everyone/ bounce-queue
    reply /550 RBL/ disable-source-ip reenable-after=1h
</smtp-pattern-list>
<domain yahoo.com>
    smtp-pattern-list errs
    max-smtp-out 5
    backoff-max-smtp-out 1
    max-msg-rate 100/m
    backoff-max-msg-rate 10/h
    retry-after 1m
    backoff-retry-after 10m
    backoff-to-normal-after 1h
{extra_domain}
</domain>
"
    )
}

/// A Yahoo-like receiver that answers RCPT with `reply` until `until`, then accepts.
fn throttling(h: &mut Harness, reply: Reply, until: Time) {
    let clock: Rc<Cell<Time>> = Rc::clone(&h.clock);
    h.mx("yahoo.com", "198.51.100.30", move || {
        let clock = Rc::clone(&clock);
        let reply = reply.clone();
        Box::new(Script {
            rcpt: Some(Box::new(move |_: &str| {
                if clock.get() < until {
                    reply.clone()
                } else {
                    Reply::new(250, Some([2, 1, 5]), "OK")
                }
            })),
            ..Script::default()
        })
    });
}

fn modes(h: &Harness) -> Vec<(f64, QueueMode, String)> {
    h.events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::ModeChanged {
                at, mode, reason, ..
            } => Some((secs(*at), *mode, reason.clone())),
            _ => None,
        })
        .collect()
}

fn inject(h: &mut Harness, n: usize) {
    for i in 0..n {
        h.inject(Some("vmta1"), &[&format!("u{i}@yahoo.com")]);
    }
}

#[test]
fn a_matching_reply_enters_backoff_and_backoff_limits_apply_until_backoff_to_normal_after() {
    let mut h = Harness::new(&config(""));
    throttling(
        &mut h,
        Reply::new(
            421,
            Some([4, 7, 0]),
            "[TS02] Messages from 192.0.2.1 temporarily deferred, try again later",
        ),
        T0.plus_secs(300),
    );
    inject(&mut h, 5);
    h.run_for(3 * 3600);
    check_all(&h);
    let modes = modes(&h);
    assert_eq!(modes[0].0, 0.06);
    assert_eq!(modes[0].1, QueueMode::Backoff);
    assert!(
        modes[0]
            .2
            .starts_with("/421 .* try again later/ matched `421 4.7.0 [TS02]"),
        "{}",
        modes[0].2
    );
    // Out after backoff-to-normal-after (1h), counted from the last trigger.
    assert_eq!((modes[1].0, modes[1].1), (3600.06, QueueMode::Normal));
    // Backoff waits backoff-retry-after (10m): no connection between the trigger and then.
    let opens: Vec<f64> = h.conns.values().map(|c| secs(c.opened)).collect();
    assert_eq!(opens, [0.0, 0.0, 0.0, 0.0, 0.0, 600.06]);
    // In backoff one connection (backoff-max-smtp-out 1) carries the five recipients the
    // backoff rate still allows this hour (10/h, 5 already attempted).
    let rcpts: Vec<f64> = h
        .rcpt_times("yahoo.com/vmta1")
        .into_iter()
        .map(secs)
        .collect();
    assert_eq!(&rcpts[5..], [600.1, 600.14, 600.18, 600.22, 600.26]);
    assert_eq!(h.records_of(RecordType::Delivered).len(), 5);
    assert_eq!(h.records_of(RecordType::Transient).len(), 5);
}

#[test]
fn the_patterns_own_backoff_to_normal_after_wins() {
    let mut h = Harness::new(&config(""));
    throttling(
        &mut h,
        Reply::new(
            421,
            Some([4, 7, 0]),
            "[TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints",
        ),
        T0.plus_secs(60),
    );
    inject(&mut h, 1);
    h.run_for(7200);
    check_all(&h);
    let modes = modes(&h);
    assert_eq!((modes[1].0, modes[1].1), (0.06 + 1800.0, QueueMode::Normal));
}

#[test]
fn backoff_to_normal_after_delivery_leaves_on_the_first_delivery() {
    let mut h = Harness::new(&config("    backoff-to-normal-after-delivery yes"));
    throttling(
        &mut h,
        Reply::new(421, Some([4, 7, 0]), "Service busy, try again later"),
        T0.plus_secs(300),
    );
    inject(&mut h, 1);
    h.run_for(7200);
    check_all(&h);
    let modes = modes(&h);
    let delivered = h.times_of(RecordType::Delivered);
    assert_eq!(
        modes[1],
        (
            delivered[0],
            QueueMode::Normal,
            "delivery while in backoff".to_string()
        )
    );
    assert!(delivered[0] < 3600.0);
}

#[test]
fn bounce_queue_bounces_everything_queued() {
    let mut h = Harness::new(&config("    max-smtp-out 1"));
    throttling(
        &mut h,
        Reply::new(550, Some([5, 7, 1]), "mailbox disabled for everyone"),
        T0.plus_secs(100_000),
    );
    inject(&mut h, 4);
    h.run_for(60);
    check_all(&h);
    let b = h.records_of(RecordType::Bounced);
    assert_eq!(b.len(), 4);
    assert!(b.iter().all(|r| secs(r.time_logged) == 0.06));
    assert_eq!(h.engine.recipients_pending(), 0);
}

#[test]
fn disable_source_ip_takes_the_ip_out_until_reenable_after() {
    let mut h = Harness::new(&config("    max-smtp-out 1\n    max-msg-per-connection 1"));
    let clock: Rc<Cell<Time>> = Rc::clone(&h.clock);
    h.mx("yahoo.com", "198.51.100.30", move || {
        let _ = &clock;
        Box::new(Script::default())
    });
    // The first connection (from 192.0.2.1) meets the RBL reply; later ones are accepted.
    let mut first = true;
    h.mx("yahoo.com", "198.51.100.30", move || {
        let rbl = first;
        first = false;
        Box::new(Script {
            rcpt: Some(Box::new(move |_: &str| {
                if rbl {
                    Reply::new(550, None, "550 RBL listed")
                } else {
                    Reply::new(250, Some([2, 1, 5]), "OK")
                }
            })),
            ..Script::default()
        })
    });
    inject(&mut h, 4);
    h.run_for(7200);
    check_all(&h);
    let disabled: Vec<_> = h
        .events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::SourceIpDisabled { at, ip, until, .. } => {
                Some((secs(*at), ip.to_string(), until.map(secs)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(disabled, [(0.06, "192.0.2.1".to_string(), Some(3600.06))]);
    let sources: Vec<(f64, String)> = h
        .conns
        .values()
        .map(|c| (secs(c.opened), c.source_ip.to_string()))
        .collect();
    // While disabled, only 192.0.2.2 connects.
    assert!(
        sources
            .iter()
            .filter(|(t, _)| *t > 0.0 && *t < 3600.06)
            .all(|(_, ip)| ip == "192.0.2.2"),
        "{sources:?}"
    );
    assert_eq!(h.records_of(RecordType::Bounced).len(), 1);
    assert_eq!(h.records_of(RecordType::Delivered).len(), 3);
}

#[test]
fn a_stopped_connection_quits_at_once_and_one_transaction_is_one_deferral() {
    let mut h = Harness::new(&config(
        "    max-smtp-out 1\n    smtp-421-means-mx-unavailable no",
    ));
    throttling(
        &mut h,
        Reply::new(
            451,
            Some([4, 7, 0]),
            "Service busy, try again later 421 please",
        ),
        T0.plus_secs(100_000),
    );
    h.inject(
        Some("vmta1"),
        &["a@yahoo.com", "b@yahoo.com", "c@yahoo.com"],
    );
    h.run_for(30);
    let retries = h
        .events
        .iter()
        .filter(|e| matches!(e, EngineEvent::RetryScheduled { .. }))
        .count();
    assert_eq!(retries, 0, "451 does not match /421 .* try again later/");
    let mut h = Harness::new(&config("    max-smtp-out 1"));
    throttling(
        &mut h,
        Reply::new(550, None, "550 RBL listed"),
        T0.plus_secs(100_000),
    );
    h.inject(Some("vmta1"), &["a@yahoo.com"]);
    h.run_for(30);
    let commands: Vec<(f64, String)> = h
        .conns
        .values()
        .next()
        .unwrap()
        .commands
        .iter()
        .map(|(t, c)| (secs(*t), c.clone()))
        .collect();
    assert_eq!(
        commands.last().unwrap(),
        &(0.06, "QUIT".to_string()),
        "{commands:?}"
    );
    assert!(h.records_of(RecordType::TransientQueue).is_empty());
}

#[test]
fn several_recipients_matching_a_backoff_pattern_take_one_retry_step() {
    let text = config("    max-smtp-out 1").replace(
        "reply /421 .* try again later/ mode=backoff",
        "reply /451 .* try again later/ mode=backoff",
    );
    let mut h = Harness::new(&text);
    throttling(
        &mut h,
        Reply::new(451, Some([4, 7, 0]), "busy, try again later"),
        T0.plus_secs(100_000),
    );
    h.inject(
        Some("vmta1"),
        &["a@yahoo.com", "b@yahoo.com", "c@yahoo.com"],
    );
    h.run_for(30);
    let retries: Vec<f64> = h
        .events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::RetryScheduled { until, .. } => Some(secs(*until)),
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        [0.06 + 600.0],
        "the first backoff-retry-after step, once"
    );
}
