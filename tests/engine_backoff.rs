//! Backoff mode and the other `<smtp-pattern-list>` actions, as PowerMTA has them.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::checkers::check_all;
use common::harness::{Harness, Script, T0, secs};
use pmta_sim::config::model::QueueMode;
use pmta_sim::engine::accounting::RecordType;
use pmta_sim::engine::{BackoffClock, EngineEvent, EngineOptions, ModeTrigger, Time};
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

fn modes(h: &Harness) -> Vec<(f64, QueueMode, ModeTrigger)> {
    h.events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::ModeChanged {
                at, mode, trigger, ..
            } => Some((secs(*at), *mode, trigger.clone())),
            _ => None,
        })
        .collect()
}

fn inject(h: &mut Harness, n: usize) {
    for i in 0..n {
        h.inject(Some("vmta1"), &[&format!("u{i}@yahoo.com")]);
    }
}

/// Reference §2.3: "A reply matching a pattern with `mode=backoff` switches it. While in
/// backoff the `backoff-*` variants replace the normal limits ... It slows the queue down; it
/// does not stop it." Connections over `backoff-max-smtp-out 1` close after their
/// transaction, one carries on within the backoff rate, the queue never enters retry mode,
/// and deliveries go on at `backoff-max-msg-rate` hour after hour.
#[test]
fn backoff_slows_the_queue_to_its_backoff_rate_and_keeps_delivering() {
    let text = "
<virtual-mta vmta1>
    smtp-source-host 192.0.2.1 mta1.sender.example
</virtual-mta>
<smtp-pattern-list errs>
    reply /451 .* try again later/ mode=backoff
</smtp-pattern-list>
<domain yahoo.com>
    smtp-pattern-list errs
    max-smtp-out 3
    backoff-max-smtp-out 1
    max-msg-rate 100/m
    backoff-max-msg-rate 6/h
    retry-after 1m
    retry-recipients-after 1m
    backoff-retry-after 3h
</domain>
";
    let mut h = Harness::new(text);
    let mut answered = false;
    h.mx("yahoo.com", "198.51.100.30", move || {
        let first = !answered;
        answered = true;
        Box::new(Script {
            rcpt: Some(Box::new(move |rcpt: &str| {
                if first && rcpt.starts_with("u0@") {
                    Reply::new(451, Some([4, 7, 0]), "Service busy, try again later")
                } else {
                    Reply::new(250, Some([2, 1, 5]), "OK")
                }
            })),
            ..Script::default()
        })
    });
    inject(&mut h, 30);
    h.run_for(4 * 3600);
    check_all(&h);
    let modes = modes(&h);
    assert_eq!(modes.len(), 1, "{modes:?}");
    assert_eq!((modes[0].0, modes[0].1), (0.06, QueueMode::Backoff));
    assert!(
        h.events
            .iter()
            .all(|e| !matches!(e, EngineEvent::RetryScheduled { .. })),
        "a backoff match does not park the queue"
    );
    // Right after the switch the queue goes on sending on the connection it keeps, up to
    // the backoff rate (six attempts in the hour, the deferred one included).
    let delivered = h.times_of(RecordType::Delivered);
    assert_eq!(
        delivered.iter().filter(|t| **t > 0.06 && **t < 1.0).count(),
        5,
        "{delivered:?}"
    );
    // Deliveries continue at 6 an hour, long before backoff-retry-after (3h) would have
    // let a parked queue go again: every hour after the first holds six.
    for hour in 1..4 {
        let from = (hour * 3600) as f64;
        let n = delivered
            .iter()
            .filter(|t| **t >= from && **t < from + 3600.0)
            .count();
        assert_eq!(n, 6, "hour {hour}: {delivered:?}");
    }
    // Never more than one connection once the backoff limits apply.
    let spans: Vec<(f64, f64)> = h
        .conns
        .values()
        .map(|c| (secs(c.opened), c.closed.map_or(f64::MAX, secs)))
        .filter(|(_, closed)| *closed > 1.0)
        .collect();
    for (opened, _) in &spans {
        let open = spans
            .iter()
            .filter(|(o, c)| o <= opened && c > opened)
            .count();
        assert!(opened < &1.0 || open <= 1, "{spans:?}");
    }
}

/// Reference §2.2: `backoff-to-normal-after` returns the queue to normal after T; whether a
/// later match restarts T the guide does not say. By default (`BackoffClock::Entry`) the
/// clock starts at the switch into backoff, so a queue that keeps meeting the reply leaves
/// after T and re-enters on the next match; `LastMatch` restarts it on every match.
#[test]
fn backoff_to_normal_after_counts_from_the_switch_or_from_the_last_match() {
    let text = config("    retry-recipients-after 10m");
    let run = |clock: BackoffClock| {
        let mut h = Harness::with_options(
            common::harness::config_from(&text),
            EngineOptions {
                seed: 7,
                backoff_clock: clock,
                ..EngineOptions::default()
            },
        );
        throttling(
            &mut h,
            Reply::new(421, Some([4, 7, 0]), "Service busy, try again later"),
            T0.plus_secs(100_000),
        );
        inject(&mut h, 1);
        h.run_for(3 * 3600);
        check_all(&h);
        modes(&h)
            .into_iter()
            .map(|(at, mode, _)| (at, mode))
            .collect::<Vec<_>>()
    };
    // Entry: out at 1h after the first match, back in at the next deferral.
    let entry = run(BackoffClock::Entry);
    assert_eq!(entry[0], (0.06, QueueMode::Backoff));
    assert_eq!(entry[1], (3600.06, QueueMode::Normal));
    assert_eq!(entry[2].1, QueueMode::Backoff);
    // LastMatch: every deferral (every 10 minutes) restarts the hour: it never leaves.
    let last = run(BackoffClock::LastMatch);
    assert_eq!(last, [(0.06, QueueMode::Backoff)]);
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
            ModeTrigger::DeliveryInBackoff
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
    assert_eq!(h.engine().recipients_pending(), 0);
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

/// Reference §2.3: backoff-retry-after is the retry interval *in backoff mode* — it applies
/// when a queue in backoff goes into retry mode (a failed connection), not at the match.
#[test]
fn backoff_retry_after_applies_to_failed_connections_in_backoff() {
    let text = config("    max-smtp-out 1").replace(
        "reply /421 .* try again later/ mode=backoff",
        "reply /451 .* try again later/ mode=backoff",
    );
    let mut h = Harness::new(&text);
    // First connection: every RCPT is deferred with the backoff reply. Later connections are
    // refused: the queue, now in backoff, waits backoff-retry-after (10m), not retry-after.
    let mut first = true;
    h.hosts.insert(
        "198.51.100.30".parse().unwrap(),
        common::harness::Host::Custom(Box::new(move |_| {
            if std::mem::take(&mut first) {
                common::harness::Behavior::Accept(Box::new(Script {
                    rcpt: Some(Box::new(|_: &str| {
                        Reply::new(451, Some([4, 7, 0]), "busy, try again later")
                    })),
                    ..Script::default()
                }))
            } else {
                common::harness::Behavior::Refuse
            }
        })),
    );
    h.dns.insert(
        "yahoo.com".into(),
        pmta_sim::engine::MxAnswer::Hosts(vec![pmta_sim::engine::MxHost {
            preference: 10,
            name: "mx.yahoo.com".into(),
            addresses: vec!["198.51.100.30".parse().unwrap()],
            port: 25,
        }]),
    );
    h.inject(
        Some("vmta1"),
        &["a@yahoo.com", "b@yahoo.com", "c@yahoo.com"],
    );
    h.run_for(1800);
    let retries: Vec<(f64, f64)> = h
        .events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::RetryScheduled { at, until, .. } => Some((secs(*at), secs(*until))),
            _ => None,
        })
        .collect();
    // The three deferrals switched the queue to backoff and scheduled nothing; the refused
    // connection 10 minutes later (retry-recipients-after) waits backoff-retry-after.
    assert!(
        (retries[0].1 - retries[0].0 - 600.0).abs() < 1e-6,
        "{retries:?}"
    );
    assert!(retries[0].0 >= 600.0, "{retries:?}");
}
