//! Operator control of the engine (`engine::control`), in virtual time: what PowerMTA's
//! `pmta pause/resume queue`, `set queue --mode`, `schedule`, `delete` and `reload` do to
//! a queue, each checked on what the receiver and the accounting records saw.

mod common;

use common::harness::{Harness, config_from};
use pmta_sim::config::model::QueueMode;
use pmta_sim::engine::accounting::RecordType;
use pmta_sim::engine::control::{Control, ControlError};

fn config(max_smtp_out: u32) -> String {
    format!(
        "
<virtual-mta vmta1>
    smtp-source-host 192.0.2.1 mta1.sender.example
</virtual-mta>
<domain example.com>
    max-smtp-out {max_smtp_out}
    retry-after 1h
    retry-after-dns-error 1h
</domain>
"
    )
}

fn status(h: &Harness, queue: &str) -> pmta_sim::engine::control::QueueStatus {
    h.engine()
        .queue_status()
        .into_iter()
        .find(|q| q.name == queue)
        .unwrap_or_else(|| panic!("no queue {queue}"))
}

#[test]
fn a_paused_domain_sends_nothing_until_resumed_even_for_queues_made_later() {
    let mut h = Harness::new(&config(2));
    h.accept_all("example.com", "198.51.100.10");
    let paused = h.control(&Control::Pause {
        target: "example.com".into(),
    });
    assert_eq!(paused.unwrap().queues, Vec::<String>::new());
    for i in 0..4 {
        h.inject(Some("vmta1"), &[&format!("u{i}@example.com")]);
    }
    h.run_for(600);
    assert!(h.records_of(RecordType::Delivered).is_empty());
    assert!(h.conns.is_empty(), "a paused queue opened a connection");
    let q = status(&h, "example.com/vmta1");
    assert!(q.paused);
    assert_eq!(q.held_by, "paused");
    assert_eq!(q.recipients_queued, 4);

    h.control(&Control::Resume {
        target: "example.com".into(),
    })
    .unwrap();
    h.run_for(60);
    assert_eq!(h.records_of(RecordType::Delivered).len(), 4);
    assert!(!status(&h, "example.com/vmta1").paused);
}

#[test]
fn delete_bounces_every_waiting_recipient_with_a_b_record() {
    let mut h = Harness::new(&config(2));
    // No MX answers: the queue waits in retry mode.
    h.dns.insert(
        "example.com".into(),
        pmta_sim::engine::MxAnswer::TempFail("SERVFAIL".into()),
    );
    for i in 0..3 {
        h.inject(
            Some("vmta1"),
            &[&format!("u{i}@example.com"), &format!("v{i}@example.com")],
        );
    }
    h.run_for(60);
    let outcome = h
        .control(&Control::Delete {
            target: "example.com/vmta1".into(),
        })
        .unwrap();
    assert_eq!(outcome.recipients_deleted, 6);
    let bounced = h.records_of(RecordType::Bounced);
    assert_eq!(bounced.len(), 6);
    assert!(bounced.iter().all(|r| r.dsn_status == "5.0.0"));
    assert_eq!(h.engine().recipients_pending(), 0);
    assert_eq!(
        h.control(&Control::Delete {
            target: "nowhere.example/vmta1".into()
        }),
        Err(ControlError::NoSuchQueue("nowhere.example/vmta1".into()))
    );
}

#[test]
fn set_mode_and_schedule_act_at_once_and_reload_keeps_the_queue() {
    let mut h = Harness::new(&config(2));
    h.dns.insert(
        "example.com".into(),
        pmta_sim::engine::MxAnswer::TempFail("SERVFAIL".into()),
    );
    h.inject(Some("vmta1"), &["u@example.com"]);
    h.run_for(10);
    let held = status(&h, "example.com/vmta1");
    assert!(held.retry_until.is_some());
    h.control(&Control::SetMode {
        target: "example.com/vmta1".into(),
        mode: QueueMode::Backoff,
    })
    .unwrap();
    assert_eq!(status(&h, "example.com/vmta1").mode, QueueMode::Backoff);

    // The receiver comes back; without `schedule` the queue would wait out its hour.
    h.dns.remove("example.com");
    h.accept_all("example.com", "198.51.100.10");
    h.reload(config_from(&config(7)));
    let reloaded = status(&h, "example.com/vmta1");
    assert_eq!(reloaded.settings.max_smtp_out, 7);
    assert_eq!(reloaded.mode, QueueMode::Backoff, "reload kept the mode");
    assert_eq!(reloaded.recipients_queued, 1, "reload kept the mail");
    h.run_for(60);
    assert!(h.records_of(RecordType::Delivered).is_empty());
    h.control(&Control::RetryNow {
        target: "example.com".into(),
    })
    .unwrap();
    h.run_for(60);
    assert_eq!(h.records_of(RecordType::Delivered).len(), 1);
}
