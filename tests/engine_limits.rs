//! The scheduler obeys each limit of a `<domain>` block, to the millisecond.
//!
//! Network latency in the harness is 10 ms each way, so a fresh connection is ready (EHLO
//! answered) 40 ms after it is opened, and a pipelined transaction takes 40 ms.

mod common;

use common::checkers::check_all;
use common::harness::{Behavior, Harness, Host, Script, secs};
use pmta_sim::engine::accounting::RecordType;
use pmta_sim::engine::{EngineEvent, MxAnswer, MxHost};
use pmta_sim::smtp::Reply;

fn harness(domain_block: &str) -> Harness {
    let config = format!(
        "<virtual-mta vmta1>\n    smtp-source-host 192.0.2.1 mta1.sender.example\n</virtual-mta>\n<domain example.com>\n{domain_block}\n</domain>\n"
    );
    let mut h = Harness::new(&config);
    h.accept_all("example.com", "198.51.100.1");
    h
}

fn inject_n(h: &mut Harness, n: usize) {
    for i in 0..n {
        h.inject(Some("vmta1"), &[&format!("u{i}@example.com")]);
    }
}

fn opened(h: &Harness) -> Vec<f64> {
    h.conns.values().map(|c| secs(c.opened)).collect()
}

fn mails_per_connection(h: &Harness) -> Vec<usize> {
    h.conns
        .values()
        .map(|c| {
            c.commands
                .iter()
                .filter(|(_, l)| l.starts_with("MAIL"))
                .count()
        })
        .collect()
}

#[test]
fn max_smtp_out_caps_concurrent_connections() {
    let mut h = harness("    max-smtp-out 2");
    inject_n(&mut h, 10);
    h.run_for(60);
    check_all(&h);
    assert_eq!(opened(&h), [0.0, 0.0]);
    assert_eq!(mails_per_connection(&h), [5, 5]);
}

#[test]
fn max_msg_per_connection_opens_a_new_connection() {
    let mut h = harness("    max-smtp-out 1\n    max-msg-per-connection 3");
    inject_n(&mut h, 7);
    h.run_for(60);
    check_all(&h);
    assert_eq!(mails_per_connection(&h), [3, 3, 1]);
    // The next connection opens when the previous one has said QUIT and been answered.
    assert_eq!(opened(&h), [0.0, 0.18, 0.36]);
}

#[test]
fn max_rcpt_per_transaction_splits_recipients() {
    let mut h = harness("    max-rcpt-per-transaction 2");
    let rcpts: Vec<String> = (0..5).map(|i| format!("u{i}@example.com")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    h.inject(Some("vmta1"), &refs);
    h.run_for(60);
    check_all(&h);
    let rcpt_lines: Vec<usize> = {
        let conn = h.conns.values().next().unwrap();
        let mut counts = Vec::new();
        for (_, line) in &conn.commands {
            if line.starts_with("MAIL") {
                counts.push(0);
            } else if line.starts_with("RCPT") {
                *counts.last_mut().unwrap() += 1;
            }
        }
        counts
    };
    assert_eq!(rcpt_lines, [2, 2, 1]);
    assert_eq!(
        h.times_of(RecordType::Delivered),
        [0.08, 0.08, 0.12, 0.12, 0.16]
    );
}

#[test]
fn max_msg_rate_counts_attempted_recipients_per_window() {
    let mut h =
        harness("    max-smtp-out 1\n    max-msg-rate 10/m\n    connection-idle-timeout 2m");
    inject_n(&mut h, 25);
    h.run_for(600);
    check_all(&h);
    let times: Vec<f64> = h
        .rcpt_times("example.com/vmta1")
        .into_iter()
        .map(secs)
        .collect();
    assert_eq!(times.len(), 25);
    assert!(times[..10].iter().all(|t| *t < 1.0), "{times:?}");
    // The 11th recipient waits until the first leaves the 60 s window, on the same
    // (parked) connection.
    assert_eq!(times[10], 60.04);
    assert_eq!(times[20], 120.04);
    assert_eq!(h.conns.len(), 1);
    // Waiting for the rate never counts as a failed attempt.
    assert!(h.records_of(RecordType::Transient).is_empty());
    assert!(h.records_of(RecordType::TransientQueue).is_empty());
}

#[test]
fn max_msg_rate_with_a_multiplier_in_the_period() {
    let mut h = harness("    max-msg-rate 2/15m");
    inject_n(&mut h, 3);
    h.run_for(3600);
    check_all(&h);
    let times: Vec<f64> = h
        .rcpt_times("example.com/vmta1")
        .into_iter()
        .map(secs)
        .collect();
    assert_eq!(times[2], 900.08, "{times:?}");
}

#[test]
fn max_connect_rate_spaces_connections() {
    let mut h =
        harness("    max-smtp-out 10\n    max-msg-per-connection 1\n    max-connect-rate 2/m");
    inject_n(&mut h, 5);
    h.run_for(600);
    check_all(&h);
    assert_eq!(opened(&h), [0.0, 0.0, 60.0, 60.0, 120.0]);
}

#[test]
fn smtp_out_rampup_interval_spaces_new_connections() {
    let mut h = harness(
        "    max-smtp-out 3\n    max-msg-per-connection 1\n    smtp-out-rampup-interval 30s",
    );
    inject_n(&mut h, 3);
    h.run_for(600);
    check_all(&h);
    assert_eq!(opened(&h), [0.0, 30.0, 60.0]);
}

#[test]
fn connection_idle_timeout_keeps_a_connection_for_new_mail() {
    let mut h = harness("    connection-idle-timeout 1m");
    inject_n(&mut h, 1);
    h.run_for(30);
    h.inject(Some("vmta1"), &["late@example.com"]);
    h.run_for(300);
    check_all(&h);
    assert_eq!(
        h.conns.len(),
        1,
        "the second message reuses the idle connection"
    );
    let quit = h
        .conns
        .values()
        .next()
        .unwrap()
        .commands
        .iter()
        .find(|(_, l)| l == "QUIT")
        .unwrap()
        .0;
    assert_eq!(secs(quit), 90.04);
}

#[test]
fn max_errors_per_connection_closes_the_connection() {
    let mut h = harness("    max-smtp-out 1\n    max-errors-per-connection 2");
    h.mx("example.com", "198.51.100.1", || {
        Box::new(Script {
            rcpt: Some(Box::new(|_: &str| {
                Reply::new(550, Some([5, 1, 1]), "no such user")
            })),
            ..Script::default()
        })
    });
    inject_n(&mut h, 3);
    h.run_for(60);
    check_all(&h);
    assert_eq!(mails_per_connection(&h), [2, 1]);
    assert_eq!(h.records_of(RecordType::Bounced).len(), 3);
}

#[test]
fn retry_after_list_is_positional_and_the_last_repeats() {
    let mut h = harness("    retry-after 1m,2m,5m\n    bounce-after 1h");
    h.hosts
        .insert("198.51.100.1".parse().unwrap(), Host::Refuse);
    inject_n(&mut h, 1);
    h.run_for(1500);
    assert_eq!(
        opened(&h),
        [0.0, 60.01, 180.02, 480.03, 780.04, 1080.05, 1380.06]
    );
    assert_eq!(h.records_of(RecordType::TransientQueue).len(), 7);
    check_all(&h);
}

#[test]
fn retry_after_restarts_from_the_first_interval_after_a_delivery() {
    let mut h =
        harness("    retry-after 1m,2m,5m\n    max-msg-per-connection 1\n    max-smtp-out 1");
    let mut calls = 0;
    h.hosts.insert(
        "198.51.100.1".parse().unwrap(),
        Host::Custom(Box::new(move |_| {
            calls += 1;
            // Refuse, refuse, accept, then refuse, refuse.
            if calls == 3 {
                Behavior::Accept(Box::new(Script::default()))
            } else {
                Behavior::Refuse
            }
        })),
    );
    inject_n(&mut h, 2);
    h.run_for(2000);
    let t = opened(&h);
    // 0 refused; +1m refused; +2m accepted (one delivery, index reset); its second message
    // opens at once and is refused; the next retry is 1m again, not 5m.
    assert_eq!(&t[..4], [0.0, 60.01, 180.02, 180.12]);
    assert_eq!(t[4], 240.13);
    check_all(&h);
}

#[test]
fn retry_recipients_after_holds_a_deferred_recipient() {
    let mut h = harness("    retry-recipients-after 5m");
    let mut first = true;
    h.mx("example.com", "198.51.100.1", move || {
        let defer = first;
        first = false;
        Box::new(Script {
            rcpt: Some(Box::new(move |_: &str| {
                if defer {
                    Reply::new(451, Some([4, 7, 1]), "greylisted, try again later")
                } else {
                    Reply::new(250, Some([2, 1, 5]), "OK")
                }
            })),
            ..Script::default()
        })
    });
    inject_n(&mut h, 1);
    h.run_for(600);
    check_all(&h);
    assert_eq!(h.times_of(RecordType::Transient), [0.06]);
    assert_eq!(h.times_of(RecordType::Delivered), [300.06 + 0.08]);
}

/// Reference §2.2, `bounce-after`: "Maximum time in queue, then a DSN bounce" — at that
/// time, not at the next attempt after it.
#[test]
fn bounce_after_expires_old_recipients() {
    let mut h = harness("    retry-after 10m\n    bounce-after 30m");
    h.hosts
        .insert("198.51.100.1".parse().unwrap(), Host::Refuse);
    inject_n(&mut h, 1);
    h.run_for(7200);
    check_all(&h);
    let b = h.records_of(RecordType::Bounced);
    assert_eq!(b.len(), 1);
    assert_eq!(secs(b[0].time_logged), 1800.0);
    assert_eq!(b[0].bounce_category, "message-expired");
    assert_eq!(b[0].dsn_status, "5.4.7");
}

/// Reference §2.2, `bounce-after`, for every recipient wherever it waits: those waiting out
/// `retry-recipients-after` (not at the front of the ready queue) expire on time too.
#[test]
fn bounce_after_expires_every_recipient_wherever_it_waits() {
    let mut h = harness("    retry-recipients-after 1h\n    bounce-after 30m");
    h.mx("example.com", "198.51.100.1", || {
        Box::new(Script {
            rcpt: Some(Box::new(|_: &str| {
                Reply::new(451, Some([4, 3, 0]), "temporary local problem")
            })),
            ..Script::default()
        })
    });
    inject_n(&mut h, 3);
    h.run_for(600);
    h.inject(Some("vmta1"), &["late@example.com"]);
    h.run_for(7200);
    check_all(&h);
    let expired: Vec<(String, f64)> = h
        .records_of(RecordType::Bounced)
        .iter()
        .map(|r| (r.rcpt.clone(), secs(r.time_logged)))
        .collect();
    assert_eq!(
        expired,
        [
            ("u0@example.com".to_string(), 1800.0),
            ("u1@example.com".to_string(), 1800.0),
            ("u2@example.com".to_string(), 1800.0),
            ("late@example.com".to_string(), 2400.0),
        ]
    );
    // Each was tried once and then waited out of the ready queue until it expired.
    assert_eq!(h.records_of(RecordType::Transient).len(), 4);
}

#[test]
fn a_recovered_message_keeps_its_original_queue_time() {
    // A restart 20 minutes after the message was first queued: `bounce-after 30m` counts
    // from the first queueing, and the records say when that was.
    let mut h = harness("    retry-after 10m\n    bounce-after 30m");
    h.hosts
        .insert("198.51.100.1".parse().unwrap(), Host::Refuse);
    let first_queued = h.now;
    h.now = h.now.plus_secs(1200);
    let data = b"From: a@sender.example\r\nSubject: recovered\r\n\r\nhello\r\n".to_vec();
    h.inject_queued(
        Some("vmta1"),
        &["u0@example.com"],
        data.clone(),
        Some(first_queued),
    );
    // A queue time in the future (a clock set back since) is read as now.
    let future = h.now.plus_secs(3600);
    h.inject_queued(Some("vmta1"), &["u1@example.com"], data, Some(future));
    h.run_for(7200);
    check_all(&h);
    let b = h.records_of(RecordType::Bounced);
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(b[0].rcpt, "u0@example.com");
    assert_eq!(secs(b[0].time_queued), 0.0);
    assert_eq!(secs(b[0].time_logged), 1800.0);
    assert_eq!(b[0].bounce_category, "message-expired");
    assert_eq!(b[1].rcpt, "u1@example.com");
    assert_eq!(secs(b[1].time_queued), 1200.0);
    assert_eq!(secs(b[1].time_logged), 3000.0);
}

#[test]
fn connect_greeting_and_data_timeouts() {
    for (behavior, block, failed_at, diag) in [
        (0, "    connect-timeout 30s", 30.0, "connect timeout"),
        (
            1,
            "    smtp-greeting-timeout 45s",
            45.01,
            "timeout waiting for the greeting",
        ),
        (
            2,
            "    smtp-data-termination-timeout 90s",
            90.06,
            "timeout waiting for the reply to end of data",
        ),
    ] {
        let mut h = harness(&format!("{block}\n    retry-after 1h"));
        let mut once = false;
        h.hosts.insert(
            "198.51.100.1".parse().unwrap(),
            Host::Custom(Box::new(move |_| {
                if once {
                    return Behavior::Accept(Box::new(Script::default()));
                }
                once = true;
                match behavior {
                    0 => Behavior::Refuse,
                    1 => Behavior::Silent,
                    _ => Behavior::MuteAfterData(Box::new(Script::default())),
                }
            })),
        );
        if behavior == 0 {
            h.hosts
                .insert("198.51.100.1".parse().unwrap(), Host::Blackhole);
        }
        inject_n(&mut h, 1);
        h.run_for(600);
        let failure = h
            .records
            .iter()
            .find(|r| {
                matches!(
                    r.record_type,
                    RecordType::TransientQueue | RecordType::Transient
                )
            })
            .unwrap();
        assert_eq!(secs(failure.time_logged), failed_at, "{block}");
        assert!(failure.dsn_diag.contains(diag), "{}", failure.dsn_diag);
        check_all(&h);
    }
}

/// Two MX hosts for example.com: the first answers `first`'s way, the second accepts.
fn two_mx(h: &mut Harness, first: Host) {
    h.dns.insert(
        "example.com".into(),
        MxAnswer::Hosts(vec![
            MxHost {
                preference: 10,
                name: "mx1.example.com".into(),
                addresses: vec!["198.51.100.1".parse().unwrap()],
                port: 25,
            },
            MxHost {
                preference: 20,
                name: "mx2.example.com".into(),
                addresses: vec!["198.51.100.2".parse().unwrap()],
                port: 25,
            },
        ]),
    );
    h.hosts.insert("198.51.100.1".parse().unwrap(), first);
    h.hosts.insert(
        "198.51.100.2".parse().unwrap(),
        Host::Accept(Box::new(|| Box::new(Script::default()))),
    );
}

fn connections_to(h: &Harness, ip: &str) -> Vec<f64> {
    h.conns
        .values()
        .filter(|c| c.ip.to_string() == ip)
        .map(|c| secs(c.opened))
        .collect()
}

/// Reference §2.2, `smtp-421-means-mx-unavailable` (default `no`): "yes → drop the
/// connection on 421 and try the next MX; no → RSET and reuse the connection". With `no`,
/// a 421 at RCPT defers that recipient only: no queue-wide retry mode, an RSET on the
/// connection, and the queue goes on opening connections to the same host — the hammering
/// a real PowerMTA does without a backoff pattern. With `yes`, the host is marked
/// unavailable and the recipient goes to the next MX at once.
#[test]
fn a_421_inside_a_transaction_defers_or_fails_over_as_smtp_421_means_mx_unavailable_says() {
    let throttling = || {
        Host::Accept(Box::new(|| {
            Box::new(Script {
                rcpt: Some(Box::new(|_: &str| {
                    Reply::new(421, Some([4, 7, 0]), "Try again later, closing connection.")
                })),
                ..Script::default()
            })
        }))
    };
    // `no` (the default): deferred, reset, and tried again every retry-recipients-after.
    let mut h = harness("    retry-recipients-after 1m\n    retry-after 1h");
    two_mx(&mut h, throttling());
    inject_n(&mut h, 1);
    h.run_for(600);
    check_all(&h);
    let to_first = connections_to(&h, "198.51.100.1");
    assert_eq!(to_first.len(), 10, "{to_first:?}");
    assert!(
        to_first
            .windows(2)
            .all(|w| (w[1] - w[0] - 60.07).abs() < 0.05),
        "{to_first:?}"
    );
    assert!(connections_to(&h, "198.51.100.2").is_empty());
    assert!(
        h.conns
            .values()
            .all(|c| c.commands.iter().any(|(_, l)| l == "RSET"))
    );
    assert_eq!(h.records_of(RecordType::Transient).len(), 10);
    assert!(h.records_of(RecordType::TransientQueue).is_empty());
    assert!(
        h.events
            .iter()
            .all(|e| !matches!(e, EngineEvent::RetryScheduled { .. })),
        "a 421 inside a transaction never puts the queue into retry mode"
    );
    assert!(h.records_of(RecordType::Delivered).is_empty());

    // `yes`: the next MX takes the recipient at once, and the dead host is remembered.
    let mut h = harness(
        "    smtp-421-means-mx-unavailable yes\n    retry-recipients-after 1m\n    retry-after 1h",
    );
    two_mx(&mut h, throttling());
    inject_n(&mut h, 1);
    h.run_for(1800);
    h.inject(Some("vmta1"), &["later@example.com"]);
    h.run_for(60);
    check_all(&h);
    assert_eq!(connections_to(&h, "198.51.100.1"), [0.0]);
    assert_eq!(connections_to(&h, "198.51.100.2"), [0.06, 1800.0]);
    assert_eq!(h.times_of(RecordType::Delivered), [0.06 + 0.08, 1800.08]);
    assert_eq!(h.records_of(RecordType::Transient).len(), 1);
    assert_eq!(h.records_of(RecordType::TransientQueue).len(), 1);
}

/// A 421 greeting is a failed connection whatever `smtp-421-means-mx-unavailable` says
/// (there is no connection to reset and reuse): the next MX is tried at once.
#[test]
fn a_421_greeting_moves_to_the_next_mx_under_either_setting() {
    for setting in ["yes", "no"] {
        let mut h = harness(&format!(
            "    smtp-421-means-mx-unavailable {setting}\n    retry-after 1h"
        ));
        two_mx(
            &mut h,
            Host::Accept(Box::new(|| {
                Box::new(Script {
                    greeting: Some(Reply::new(
                        421,
                        Some([4, 7, 0]),
                        "Try again later, closing connection.",
                    )),
                    ..Script::default()
                })
            })),
        );
        inject_n(&mut h, 1);
        h.run_for(60);
        check_all(&h);
        assert_eq!(connections_to(&h, "198.51.100.2").len(), 1, "{setting}");
        assert_eq!(h.records_of(RecordType::Delivered).len(), 1, "{setting}");
    }
}

/// A host that refused a connection is remembered as down for the queue's retry interval,
/// as real MTAs keep a dead host rather than trying it first on every new connection: one
/// failed attempt (and one `tq` record) per retry interval, not one per message.
#[test]
fn a_dead_mx_is_remembered_for_the_retry_interval() {
    let mut h = harness("    retry-after 10m");
    two_mx(&mut h, Host::Refuse);
    inject_n(&mut h, 1);
    h.run_for(300);
    h.inject(Some("vmta1"), &["second@example.com"]);
    h.run_for(360);
    h.inject(Some("vmta1"), &["third@example.com"]);
    h.run_for(60);
    check_all(&h);
    assert_eq!(connections_to(&h, "198.51.100.1"), [0.0, 660.0]);
    assert_eq!(connections_to(&h, "198.51.100.2"), [0.01, 300.0, 660.01]);
    assert_eq!(h.records_of(RecordType::TransientQueue).len(), 2);
    assert_eq!(h.records_of(RecordType::Delivered).len(), 3);
}

#[test]
fn bounce_upon_no_mx() {
    for (setting, bounced) in [("yes", true), ("no", false)] {
        let mut h = harness(&format!("    bounce-upon-no-mx {setting}"));
        h.dns.insert("example.com".into(), MxAnswer::NoMailHost);
        inject_n(&mut h, 1);
        h.run_for(30);
        check_all(&h);
        let b = h.records_of(RecordType::Bounced);
        assert_eq!(b.len(), usize::from(bounced));
        if bounced {
            assert_eq!(b[0].bounce_category, "bad-domain");
            assert_eq!(secs(b[0].time_logged), 0.0);
        } else {
            assert_eq!(h.records_of(RecordType::TransientQueue).len(), 1);
        }
    }
}

#[test]
fn type_discard_delivers_without_connecting() {
    let mut h = harness("    type discard");
    inject_n(&mut h, 3);
    h.run_for(10);
    check_all(&h);
    assert!(h.conns.is_empty());
    let d = h.records_of(RecordType::Delivered);
    assert_eq!(d.len(), 3);
    assert_eq!(d[0].dlv_type, "discard");
    assert_eq!(secs(d[0].time_logged), 0.0);
}

#[test]
fn queue_priority_decides_who_gets_a_freed_connection_slot() {
    let config = "total-max-smtp-out 1
<virtual-mta vmta1>
    smtp-source-host 192.0.2.1 mta1.sender.example
</virtual-mta>
<domain *>
    smtp-hosts [198.51.100.1]
</domain>
<domain low.example>
    queue-priority 10
</domain>
<domain high.example>
    queue-priority 90
</domain>
";
    let mut h = Harness::new(config);
    h.hosts.insert(
        "198.51.100.1".parse().unwrap(),
        Host::Accept(Box::new(|| Box::new(Script::default()))),
    );
    h.inject(Some("vmta1"), &["a@first.example"]);
    h.inject(Some("vmta1"), &["a@low.example"]);
    h.inject(Some("vmta1"), &["a@high.example"]);
    h.run_for(60);
    check_all(&h);
    let order: Vec<&str> = h.conns.values().map(|c| c.queue.as_str()).collect();
    assert_eq!(
        order,
        [
            "first.example/vmta1",
            "high.example/vmta1",
            "low.example/vmta1"
        ]
    );
    let retries = h
        .events
        .iter()
        .filter(|e| matches!(e, EngineEvent::RetryScheduled { .. }))
        .count();
    assert_eq!(retries, 0);
}

fn two_ip_harness(domain_block: &str) -> Harness {
    let config = format!(
        "<virtual-mta vmta1>\n    smtp-source-host 192.0.2.1 mta1.sender.example\n    smtp-source-host 192.0.2.2 mta2.sender.example\n</virtual-mta>\n<domain example.com>\n{domain_block}\n</domain>\n"
    );
    let mut h = Harness::new(&config);
    h.accept_all("example.com", "198.51.100.1");
    h
}

#[test]
fn source_ip_max_smtp_out_caps_each_ip_by_its_most_specific_network() {
    let mut h = two_ip_harness(
        "    max-smtp-out 10\n    source-ip-max-smtp-out 0/0 2\n    source-ip-max-smtp-out 192.0.2.1 1",
    );
    inject_n(&mut h, 10);
    h.run_for(60);
    check_all(&h);
    let from = |ip: &str| {
        h.conns
            .values()
            .filter(|c| c.source_ip.to_string() == ip)
            .count()
    };
    assert_eq!((from("192.0.2.1"), from("192.0.2.2")), (1, 2));
    assert_eq!(h.records_of(RecordType::Delivered).len(), 10);
}

#[test]
fn source_ip_max_msg_rate_limits_each_ip() {
    let mut h = two_ip_harness(
        "    max-smtp-out 1\n    source-ip-max-msg-rate 192.0.2.0/24 3/m\n    connection-idle-timeout 5m",
    );
    inject_n(&mut h, 9);
    h.run_for(600);
    check_all(&h);
    let times: Vec<f64> = h
        .rcpt_times("example.com/vmta1")
        .into_iter()
        .map(secs)
        .collect();
    // One connection from 192.0.2.1 takes 3 a minute.
    assert_eq!(
        times,
        [
            0.04, 0.08, 0.12, 60.04, 60.08, 60.12, 120.04, 120.08, 120.12
        ]
    );
}

#[test]
fn retry_upon_new_mail_ends_retry_mode() {
    for (setting, delivered_at) in [("yes", 60.08), ("no", 600.09)] {
        let mut h = harness(&format!(
            "    retry-after 10m\n    retry-upon-new-mail {setting}"
        ));
        h.hosts.insert(
            "198.51.100.1".parse().unwrap(),
            Host::Custom(Box::new(|at| {
                if secs(at) < 30.0 {
                    Behavior::Refuse
                } else {
                    Behavior::Accept(Box::new(Script::default()))
                }
            })),
        );
        inject_n(&mut h, 1);
        h.run_for(60);
        h.inject(Some("vmta1"), &["new@example.com"]);
        h.run_for(1200);
        check_all(&h);
        let d = h.times_of(RecordType::Delivered);
        assert_eq!(d[0], delivered_at, "retry-upon-new-mail {setting}");
    }
}

#[test]
fn silence_after_the_data_can_mean_delivered_or_bounced() {
    for (block, kind) in [
        (
            "    assume-delivery-upon-data-termination-timeout yes",
            RecordType::Delivered,
        ),
        ("    bounce-upon-transfer-failure yes", RecordType::Bounced),
        ("", RecordType::Transient),
    ] {
        let mut h = harness(&format!("    smtp-data-termination-timeout 1m\n{block}"));
        h.hosts.insert(
            "198.51.100.1".parse().unwrap(),
            Host::Custom(Box::new(|_| {
                Behavior::MuteAfterData(Box::new(Script::default()))
            })),
        );
        inject_n(&mut h, 1);
        h.run_for(61);
        let first = h
            .records
            .iter()
            .find(|r| r.rcpt == "u0@example.com")
            .unwrap();
        assert_eq!(
            (first.record_type, secs(first.time_logged)),
            (kind, 60.06),
            "{block}"
        );
    }
}

#[test]
fn disable_acct_records_suppresses_record_types() {
    let mut h = harness("    disable-acct-records t");
    h.mx("example.com", "198.51.100.1", || {
        Box::new(Script {
            rcpt: Some(Box::new(|_: &str| {
                Reply::new(451, Some([4, 7, 1]), "later")
            })),
            ..Script::default()
        })
    });
    inject_n(&mut h, 1);
    h.run_for(60);
    assert!(h.records_of(RecordType::Transient).is_empty());
    assert_eq!(h.engine().recipients_pending(), 1);
}

#[test]
fn local_delivery_types_deliver_at_once_and_say_how() {
    let mut h = harness("    type pipe");
    inject_n(&mut h, 1);
    h.run_for(1);
    let d = h.records_of(RecordType::Delivered);
    assert_eq!(
        (d[0].dlv_type.as_str(), d[0].dsn_diag.as_str()),
        ("pipe", "smtp;250 2.0.0 delivered locally (type pipe)")
    );
    assert!(h.conns.is_empty());
}

#[test]
fn bounce_upon_5xx_greeting() {
    for (setting, bounced) in [("yes", 1), ("no", 0)] {
        let mut h = harness(&format!(
            "    bounce-upon-5xx-greeting {setting}\n    retry-after 1h"
        ));
        h.mx("example.com", "198.51.100.1", || {
            Box::new(Script {
                greeting: Some(Reply::new(554, Some([5, 7, 1]), "no service for you")),
                ..Script::default()
            })
        });
        inject_n(&mut h, 1);
        h.run_for(60);
        check_all(&h);
        assert_eq!(
            h.records_of(RecordType::Bounced).len(),
            bounced,
            "bounce-upon-5xx-greeting {setting}"
        );
        assert_eq!(h.records_of(RecordType::TransientQueue).len(), 1 - bounced);
    }
    // Reference §2.2: `bounce-upon-5xx-greeting` is about the greeting. A 5xx to EHLO (and
    // to the HELO tried after it) is a failed attempt: retried, never bounced.
    let mut h = harness("    bounce-upon-5xx-greeting yes\n    retry-after 1h");
    h.mx("example.com", "198.51.100.1", || {
        Box::new(Script {
            ehlo: Some(Reply::new(554, Some([5, 7, 1]), "no service for you")),
            ..Script::default()
        })
    });
    inject_n(&mut h, 1);
    h.run_for(60);
    check_all(&h);
    assert!(h.records_of(RecordType::Bounced).is_empty());
    let tq = h.records_of(RecordType::TransientQueue);
    assert_eq!(tq.len(), 1);
    assert_eq!(tq[0].dsn_diag, "smtp;554 5.7.1 no service for you");
    assert_eq!(h.engine().recipients_pending(), 1);
}

#[test]
fn the_remote_closing_an_idle_connection_is_not_a_failure() {
    let mut h = harness("    connection-idle-timeout 5m\n    retry-after 10m");
    inject_n(&mut h, 1);
    h.run_for(10);
    h.remote_close_all();
    h.run_for(10);
    h.inject(Some("vmta1"), &["later@example.com"]);
    h.run_for(10);
    check_all(&h);
    assert!(h.records_of(RecordType::TransientQueue).is_empty());
    assert!(
        h.events
            .iter()
            .all(|e| !matches!(e, EngineEvent::RetryScheduled { .. }))
    );
    // The next message opens a fresh connection at once.
    assert_eq!(opened(&h), [0.0, 20.0]);
}

#[test]
fn bounce_upon_no_mx_with_an_interval_counts_from_the_first_answer() {
    let mut h = harness("    bounce-upon-no-mx 3m\n    retry-after-dns-error 1m");
    h.dns.insert("example.com".into(), MxAnswer::NoMailHost);
    inject_n(&mut h, 1);
    h.run_for(600);
    check_all(&h);
    let b = h.records_of(RecordType::Bounced);
    assert_eq!(b.len(), 1);
    assert_eq!(secs(b[0].time_logged), 180.0);
    assert_eq!(h.records_of(RecordType::TransientQueue).len(), 3);
}
