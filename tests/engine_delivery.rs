//! The engine end to end in the harness: delivery, routing, sessions and records.

mod common;

use common::checkers::check_all;
use common::harness::{Harness, Script, T0, secs};
use pmta_sim::engine::accounting::RecordType;
use pmta_sim::engine::{MxAnswer, MxHost};
use pmta_sim::smtp::Reply;

const BASE: &str = "
<virtual-mta vmta1>
    smtp-source-host 192.0.2.1 mta1.sender.example
</virtual-mta>
<virtual-mta vmta2>
    smtp-source-host 192.0.2.2 mta2.sender.example
</virtual-mta>
<virtual-mta-pool pool>
    virtual-mta vmta1
    virtual-mta vmta2
</virtual-mta-pool>
";

#[test]
fn a_message_is_delivered_with_exact_timing_and_a_complete_record() {
    let mut h = Harness::new(BASE);
    h.accept_all("gmail.com", "198.51.100.1");
    h.inject(Some("vmta1"), &["u1@gmail.com", "u2@gmail.com"]);
    h.run_for(60);
    check_all(&h);
    // t=0 inject, resolve, connect; +10ms connected; +20ms greeting; EHLO reply +40ms;
    // pipelined MAIL/RCPT/DATA reply +60ms; end of data reply +80ms.
    assert_eq!(h.times_of(RecordType::Delivered), [0.08, 0.08]);
    let record = h.records_of(RecordType::Delivered)[0];
    assert_eq!(record.rcpt, "u1@gmail.com");
    assert_eq!(record.orig, "a@sender.example");
    assert_eq!(record.queue, "gmail.com/vmta1");
    assert_eq!(record.vmta, "vmta1");
    assert_eq!(record.dlv_source_ip, "192.0.2.1");
    assert_eq!(record.dlv_destination_ip, "198.51.100.1");
    assert_eq!(record.dsn_mta, "mx.gmail.com");
    assert_eq!(record.dsn_status, "2.0.0");
    assert_eq!(record.dsn_diag, "smtp;250 2.0.0 OK queued");
    assert_eq!(
        record.dlv_esmtp_available,
        "PIPELINING,8BITMIME,SIZE,ENHANCEDSTATUSCODES"
    );
    assert_eq!(record.time_queued, T0);
    assert_eq!(record.fields()[1], "2026-09-21 12:00:00+0000");
    let conn = h.conns.values().next().unwrap();
    let commands: Vec<&str> = conn.commands.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        commands,
        [
            "EHLO mta1.sender.example",
            "MAIL FROM:<a@sender.example> SIZE=89",
            "RCPT TO:<u1@gmail.com>",
            "RCPT TO:<u2@gmail.com>",
            "DATA",
            "QUIT"
        ]
    );
    assert_eq!(h.engine().recipients_pending(), 0);
}

#[test]
fn pools_rotate_and_queue_to_names_the_shared_queue() {
    let mut h = Harness::new(&format!(
        "{BASE}<domain googlemail.com>\n    queue-to gmail.com\n</domain>\n"
    ));
    h.accept_all("gmail.com", "198.51.100.1");
    for _ in 0..4 {
        h.inject(Some("pool"), &["u@googlemail.com"]);
    }
    h.run_for(60);
    check_all(&h);
    let queues: Vec<&str> = h
        .records_of(RecordType::Delivered)
        .iter()
        .map(|r| r.queue.as_str())
        .collect();
    assert_eq!(
        queues.iter().filter(|q| **q == "gmail.com/vmta1").count(),
        2
    );
    assert_eq!(
        queues.iter().filter(|q| **q == "gmail.com/vmta2").count(),
        2
    );
    assert!(
        h.records_of(RecordType::Delivered)
            .iter()
            .all(|r| r.vmta_pool == "pool")
    );
    // googlemail.com mail rides gmail.com's MX lookup.
    assert!(h.resolved.iter().any(|d| d == "gmail.com"));
    assert!(!h.resolved.iter().any(|d| d == "googlemail.com"));
}

#[test]
fn x_virtual_mta_header_and_default_virtual_mta_route_messages() {
    let mut h = Harness::new(&format!("{BASE}default-virtual-mta vmta2\n"));
    h.accept_all("example.net", "198.51.100.9");
    h.inject(None, &["a@example.net"]);
    h.inject_data(
        None,
        &["b@example.net"],
        b"X-Virtual-MTA: vmta1\r\nFrom: a@sender.example\r\n\r\nhi\r\n".to_vec(),
    );
    h.run_for(60);
    let vmtas: Vec<(&str, &str)> = h
        .records_of(RecordType::Delivered)
        .iter()
        .map(|r| (r.rcpt.as_str(), r.vmta.as_str()))
        .collect();
    assert!(vmtas.contains(&("a@example.net", "vmta2")));
    assert!(vmtas.contains(&("b@example.net", "vmta1")));
}

#[test]
fn mx_hosts_are_tried_in_preference_order() {
    let mut h = Harness::new(BASE);
    h.dns.insert(
        "yahoo.com".into(),
        MxAnswer::Hosts(vec![
            MxHost {
                preference: 20,
                name: "mx2.yahoo.com".into(),
                addresses: vec!["198.51.100.22".parse().unwrap()],
                port: 25,
            },
            MxHost {
                preference: 10,
                name: "mx1.yahoo.com".into(),
                addresses: vec!["198.51.100.21".parse().unwrap()],
                port: 25,
            },
        ]),
    );
    h.hosts.insert(
        "198.51.100.21".parse().unwrap(),
        common::harness::Host::Refuse,
    );
    h.hosts.insert(
        "198.51.100.22".parse().unwrap(),
        common::harness::Host::Accept(Box::new(|| Box::new(Script::default()))),
    );
    h.inject(Some("vmta1"), &["u@yahoo.com"]);
    h.run_for(60);
    check_all(&h);
    let tried: Vec<String> = h.conns.values().map(|c| c.ip.to_string()).collect();
    assert_eq!(tried, ["198.51.100.21", "198.51.100.22"]);
    let tq = h.records_of(RecordType::TransientQueue);
    assert_eq!(tq.len(), 1);
    assert_eq!(
        tq[0].dsn_diag,
        "smtp;451 4.4.1 connection failed: Connection refused"
    );
    let d = h.records_of(RecordType::Delivered);
    assert_eq!(d[0].dsn_mta, "mx2.yahoo.com");
    assert_eq!(secs(d[0].time_logged), 0.09);
}

#[test]
fn recipients_get_their_own_replies_and_the_message_is_sent_once() {
    let mut h = Harness::new(BASE);
    h.mx("example.org", "198.51.100.5", || {
        Box::new(Script {
            rcpt: Some(Box::new(|rcpt: &str| match rcpt {
                r if r.starts_with("gone") => Reply::new(550, Some([5, 1, 1]), "user unknown"),
                r if r.starts_with("full") => Reply::new(452, Some([4, 2, 2]), "mailbox full"),
                _ => Reply::new(250, Some([2, 1, 5]), "OK"),
            })),
            ..Script::default()
        })
    });
    h.inject(
        Some("vmta1"),
        &["ok@example.org", "gone@example.org", "full@example.org"],
    );
    h.run_for(5);
    let d = h.records_of(RecordType::Delivered);
    let b = h.records_of(RecordType::Bounced);
    let t = h.records_of(RecordType::Transient);
    assert_eq!(d.len(), 1);
    assert_eq!(
        (b[0].rcpt.as_str(), b[0].bounce_category.as_str()),
        ("gone@example.org", "bad-mailbox")
    );
    assert_eq!(
        (t[0].rcpt.as_str(), t[0].bounce_category.as_str()),
        ("full@example.org", "quota-issues")
    );
    assert_eq!(t[0].dsn_diag, "smtp;452 4.2.2 mailbox full");
    check_all(&h);
}

#[test]
fn starttls_is_used_when_offered() {
    let mut h = Harness::new(BASE);
    h.mx("tls.example", "198.51.100.7", || {
        Box::new(Script {
            capabilities: Some(vec!["PIPELINING".into(), "STARTTLS".into()]),
            ..Script::default()
        })
    });
    h.inject(Some("vmta1"), &["u@tls.example"]);
    h.run_for(5);
    assert!(h.tls_names.iter().any(|n| n == "mx.tls.example"));
    let commands: Vec<&str> = h
        .conns
        .values()
        .next()
        .unwrap()
        .commands
        .iter()
        .map(|(_, c)| c.as_str())
        .collect();
    assert_eq!(
        &commands[..3],
        [
            "EHLO mta1.sender.example",
            "STARTTLS",
            "EHLO mta1.sender.example"
        ]
    );
    assert_eq!(h.records_of(RecordType::Delivered).len(), 1);
}

/// Runs a small mixed scenario and returns its accounting file.
fn acct_csv() -> Vec<u8> {
    let mut h = Harness::new(BASE);
    h.accept_all("gmail.com", "198.51.100.1");
    h.mx("yahoo.com", "198.51.100.2", || {
        Box::new(Script {
            rcpt: Some(Box::new(|r: &str| {
                if r.starts_with('x') {
                    Reply::new(550, Some([5, 1, 1]), "no")
                } else {
                    Reply::new(451, Some([4, 7, 1]), "later")
                }
            })),
            ..Script::default()
        })
    });
    for i in 0..20 {
        h.inject(
            Some("pool"),
            &[
                &format!("u{i}@gmail.com"),
                &format!("x{i}@yahoo.com"),
                &format!("y{i}@yahoo.com"),
            ],
        );
    }
    h.run_for(3600);
    check_all(&h);
    let mut writer = pmta_sim::engine::accounting::CsvWriter::new(Vec::new()).unwrap();
    for record in &h.records {
        writer.write(record).unwrap();
    }
    writer.finish().unwrap()
}

#[test]
fn the_same_inputs_give_a_byte_identical_accounting_file() {
    let first = acct_csv();
    let second = acct_csv();
    assert_eq!(first, second);
    let text = String::from_utf8(first).unwrap();
    assert!(text.starts_with("type,timeLogged,timeQueued,orig,rcpt,orcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,srcType,srcMta,dlvType,dlvSourceIp,dlvDestinationIp,dlvEsmtpAvailable,dlvSize,vmta,jobId,envId,queue,vmtaPool\r\n"));
    for kind in ["d,", "b,", "t,"] {
        assert!(
            text.lines().any(|l| l.starts_with(kind)),
            "no {kind} record"
        );
    }
}

fn driver_keeps_bodies() -> Harness {
    Harness::with_options(
        common::harness::config_from(BASE),
        pmta_sim::engine::EngineOptions {
            seed: 7,
            bodies: pmta_sim::engine::Bodies::Driver,
            ..Default::default()
        },
    )
}

#[test]
fn a_driver_that_keeps_the_bodies_is_asked_for_each_transaction() {
    let data = b"From: a@sender.example\r\nSubject: kept outside\r\n\r\n.dot line\r\nhello\r\n";
    let mut kept = driver_keeps_bodies();
    let mut inside = Harness::new(BASE);
    for h in [&mut kept, &mut inside] {
        h.mx("gmail.com", "198.51.100.1", {
            let mut first = true;
            move || {
                let defer = std::mem::replace(&mut first, false);
                Box::new(Script {
                    message: Some(Box::new(move |_| {
                        if defer {
                            Reply::new(451, Some([4, 3, 0]), "try later")
                        } else {
                            Reply::new(250, Some([2, 0, 0]), "OK")
                        }
                    })),
                    ..Script::default()
                })
            }
        });
        h.inject_data(Some("vmta1"), &["u1@gmail.com"], data.to_vec());
        h.run_for(3600);
        check_all(h);
    }
    // Asked once per attempt: the first is deferred, the retry is delivered.
    assert_eq!(kept.loads.len(), 2, "{:?}", kept.loads);
    assert!(inside.loads.is_empty());
    // The same bytes reach the receiver, a loaded body's latency later.
    assert_eq!(kept.received(), inside.received());
    assert_eq!(kept.received().len(), 2);
    let delivered = |h: &Harness| h.times_of(RecordType::Delivered);
    assert_eq!(delivered(&kept).len(), 1);
    assert!(delivered(&kept)[0] > delivered(&inside)[0]);
    // Settled recipients are reported by message and index, whether or not a record is.
    let settled: Vec<_> = kept
        .events
        .iter()
        .filter_map(|e| match e {
            pmta_sim::engine::EngineEvent::RecipientSettled {
                recipient, outcome, ..
            } => Some((*recipient, *outcome)),
            _ => None,
        })
        .collect();
    assert_eq!(settled, [(0, pmta_sim::engine::Settled::Delivered)]);
}

#[test]
fn a_body_the_driver_cannot_read_defers_its_recipients() {
    let mut h = driver_keeps_bodies();
    h.accept_all("gmail.com", "198.51.100.1");
    h.inject(Some("vmta1"), &["u1@gmail.com", "u2@gmail.com"]);
    h.bodies.clear();
    h.run_for(30);
    let deferred = h.records_of(RecordType::Transient);
    assert_eq!(deferred.len(), 2);
    assert_eq!(
        deferred[0].dsn_diag,
        "smtp;451 4.3.0 message data unreadable: no such message file"
    );
    assert!(h.received().is_empty());
    assert_eq!(h.engine().recipients_pending(), 2);
    check_all(&h);
}

#[test]
fn a_stop_lets_transactions_in_flight_finish_and_starts_nothing() {
    let mut h = Harness::new(BASE);
    h.accept_all("gmail.com", "198.51.100.1");
    h.inject(Some("vmta1"), &["u1@gmail.com"]);
    // The connection is open and its transaction under way (the greeting is at +20 ms).
    h.run_for(0);
    h.now = T0.plus_ms(50);
    h.run_for(0);
    h.stop();
    h.inject(Some("vmta1"), &["u2@gmail.com"]);
    h.run_for(60);
    assert_eq!(h.records_of(RecordType::Delivered).len(), 1);
    assert_eq!(h.engine().connections_open(), 0);
    assert_eq!(h.engine().recipients_pending(), 1);
    assert_eq!(h.conns.len(), 1, "no new connection after the stop");
    check_all(&h);
}
